"""The archive: data-model sequences in a Zarr store on a regular time axis.

Layout (format 2). Slot ``k`` of the store holds the frame valid at
``t0 + k * time_step``, where ``t0`` is the first frame's time taken back by
whole steps to the start of 1970, so a frame of any later date, earlier or
later than those archived, has its slot (unwritten chunks cost nothing). The
data variable is the store's only array along ``time``. Which slots hold a
frame is the commit record, one attribute of the Zarr group
(``nowcast_archive``: ``t0``, ``slots``, and the ``present`` slot ranges),
written in one atomic file replace. So:

* A late frame goes into its own slot (a region write); gaps stay gaps until
  filled; re-writing a frame already present is a no-op.
* Crash-safe at every store write: a write grows the array, writes its
  frames' chunks (each an atomic file replace) and only then commits. A crash
  before the commit leaves frames no reader sees; the next write overwrites
  them. Readers build the time axis from the record, so a longer array than
  the record says is harmless, and there is no second time array to tear.
* One writer at a time: every write holds an inter-process lock (``filelock``
  on ``<store>.lock`` beside the store), waiting at most ``lock_timeout``
  seconds before a clear :class:`ArchiveLocked` error. Readers need no lock.
* A new store is written to a temporary folder and renamed into place;
  leftovers of a killed creation are removed by the next write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from typing import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from filelock import FileLock, Timeout

from nowcast.grids import Grid
from nowcast.products.atomic import check_writable as check_folder_writable
from nowcast.products.atomic import write_text_atomic
from nowcast.schema import SchemaError, data_variables, time_step, validate

log = logging.getLogger(__name__)

RECORD = "nowcast_archive"
FORMAT = 2
TARGET_CHUNK_BYTES = 4 * 2**20
LOCK_TIMEOUT = 600.0
EPOCH = pd.Timestamp("1970-01-01")


class ArchiveError(RuntimeError):
    """The archive cannot take or give what was asked (names the store and why)."""


class ArchiveLocked(ArchiveError):
    """Another writer held the archive's lock for longer than the timeout."""


def time_chunk(ds: xr.Dataset) -> int:
    """Frames per Zarr chunk: about 4 MiB of float32, at least one frame."""
    frame_bytes = 4 * int(np.prod([n for d, n in ds.sizes.items() if d != "time"]))
    return int(max(1, min(2048, TARGET_CHUNK_BYTES // max(frame_bytes, 1))))


# -- the commit record ---------------------------------------------------------------------------------------

def _record(store: Path) -> dict:
    return _record_in(zarr.open_group(str(store), mode="r").attrs, store)


def _record_in(attrs, store: Path) -> dict:
    """The commit record among a store's group attributes."""
    if RECORD not in attrs:
        if "nowcast_committed" in attrs:
            raise ArchiveError(f"{store}: written by an older nowcast (archive format 1, no regular time axis); "
                               "re-ingest its source files into a new archive")
        raise ArchiveError(f"{store}: no commit record ({RECORD!r} attribute)")
    return dict(attrs[RECORD])


def _present(record: dict) -> np.ndarray:
    """Indices of the slots that hold a frame, ascending."""
    ranges = record["present"]
    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, np.int64)


def _ranges(slots: np.ndarray) -> list[list[int]]:
    """Sorted unique slot indices as ``[start, stop)`` ranges (compact for long archives)."""
    if slots.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(slots, breaks)]


def _slot_times(record: dict, slots: np.ndarray) -> pd.DatetimeIndex:
    t0, step = pd.Timestamp(record["t0"]), pd.Timedelta(record["step"])
    return pd.DatetimeIndex(t0.value + slots.astype(np.int64) * step.value).as_unit("ns")


def _slots_of(record: dict, times: pd.DatetimeIndex, store: Path) -> np.ndarray:
    """Slot index of each time; refuses times off the regular axis or before its start."""
    t0, step = pd.Timestamp(record["t0"]), pd.Timedelta(record["step"])
    offset = times.as_unit("ns").asi8 - t0.value
    off_axis = offset % step.value != 0
    if off_axis.any():
        raise ArchiveError(f"{store}: time {times[off_axis][0]} is not on the archive's regular axis "
                           f"({t0} + k x {step}); the source's time step must match")
    if (offset < 0).any():
        raise ArchiveError(f"{store}: time {times[offset < 0][0]} is before 1970, the archive's first slot {t0}")
    return (offset // step.value).astype(np.int64)


# -- reading -------------------------------------------------------------------------------------------------

def exists(store: str | os.PathLike) -> bool:
    """True if ``store`` holds a nowcast archive (of any format)."""
    try:
        attrs = zarr.open_group(str(store), mode="r").attrs
        return RECORD in attrs or "nowcast_committed" in attrs
    except Exception:  # noqa: BLE001 - any unreadable store is "not an archive"
        return False


def open_archive(store: str | os.PathLike, *, validate_model: bool = True, chunks: str | None = "stored"
                 ) -> xr.Dataset:
    """Open the committed frames of an archive lazily, in time order (gaps are absent times).

    Args:
        store: the Zarr folder.
        validate_model: check the data model.
        chunks: ``"stored"`` gives dask arrays of as many frames a chunk as stored; None gives
            xarray's lazy backend arrays, so indexing one window reads only the chunks it hits.
    """
    store = Path(store)
    if not store.exists():
        raise ArchiveError(f"{store}: no such archive")
    try:  # one open of the store: the commit record comes with the group's attributes
        ds = xr.open_zarr(store, consolidated=False, chunks=None)
        record = _record_in(ds.attrs, store)
    except ArchiveError:
        raise
    except Exception as err:  # noqa: BLE001 - report any store damage the same way
        raise ArchiveError(f"{store}: not a nowcast archive ({err})") from err
    slots = _present(record)
    # Lazily indexed first, dask after: a dask graph over every slot since 1970 would be huge.
    ds = ds.isel(time=slots).assign_coords(time=("time", _slot_times(record, slots), record["time_attrs"]))
    if chunks is not None:
        variable = data_variables(ds)[0]
        ds = ds.chunk({"time": ds[variable].encoding.get("chunks", (time_chunk(ds),))[0]})
    ds.attrs.pop(RECORD, None)
    return validate(ds) if validate_model else ds


def times(store: str | os.PathLike) -> pd.DatetimeIndex:
    """Committed times of an archive (cheap: reads the commit record only)."""
    record = _record(Path(store))
    return _slot_times(record, _present(record))


# -- writing -------------------------------------------------------------------------------------------------

def lock(store: str | os.PathLike, timeout: float = LOCK_TIMEOUT):
    """Hold the archive's inter-process writer lock (``<store>.lock`` beside it): ``with lock(store):``.

    Re-entrant within a thread (one ``FileLock`` per store and process), exclusive between threads and
    processes. Raises :class:`ArchiveLocked` after ``timeout`` seconds of waiting.
    """
    store = Path(store).absolute()
    path = str(store.with_name(store.name + ".lock"))
    with _LOCKS_GUARD:
        file_lock = _LOCKS.setdefault(path, FileLock(path))
    try:
        return file_lock.acquire(timeout=timeout)
    except Timeout:
        raise ArchiveLocked(f"{store}: another writer has held its lock ({store.name}.lock) for more than "
                            f"{timeout:g} s; try again when it has finished") from None


_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def check_writable(store: str | os.PathLike) -> None:
    """Refuse, before any work, a store whose folder cannot be written (names the folder)."""
    store = Path(store).absolute()
    try:
        check_folder_writable(store.parent)
    except OSError as err:
        raise ArchiveError(f"{store}: cannot write in {store.parent} ({err.strerror or err})") from None


def write(ds: xr.Dataset, store: str | os.PathLike, *, lock_timeout: float = LOCK_TIMEOUT) -> int:
    """Write the frames of ``ds`` into their slots of the archive at ``store``; return frames added.

    Frames already present are skipped (re-writing is a no-op); a frame
    earlier than the newest one fills its own slot. The grid (CRS, shape,
    coordinates), variable and time step must match the archive's.

    Raises:
        ArchiveError: on a grid, variable or time-axis mismatch.
        ArchiveLocked: another writer kept the lock for ``lock_timeout`` seconds.
    """
    validate(ds, forecast=False)
    store = Path(store)
    with lock(store, lock_timeout):
        _clean_leftovers(store)
        if not exists(store):
            if store.exists():
                raise ArchiveError(f"{store}: exists but is not a nowcast archive; refusing to overwrite")
            return _create(ds, store)
        group, record, slots = _target(ds, store)
        return _write_slots(ds, group, record, slots, store)


def reserve(store: str | os.PathLike, times: Sequence) -> None:
    """Grow the archive so that ``times`` have slots (for :func:`stage`); the caller holds :func:`lock`."""
    store = Path(store)
    record = _record(store)
    needed = int(_slots_of(record, pd.DatetimeIndex(times), store).max()) + 1 if len(times) else 0
    array = zarr.open_group(str(store), mode="r+")[record["variable"]]
    if array.shape[0] < needed:
        array.resize((needed,) + array.shape[1:])


def stage(ds: xr.Dataset, store: str | os.PathLike, slot_range: tuple[int, int] | None = None) -> pd.DatetimeIndex:
    """Write the frames of ``ds`` not yet present into their reserved slots, without committing them.

    For parallel writers (Dask workers) under one lock holder, who then calls
    :func:`commit`; ``slot_range`` (start, stop) is this writer's share of the
    axis, in whole chunks, so no two writers touch one chunk. Returns the times written.
    """
    validate(ds, forecast=False)
    store = Path(store)
    group, record, slots = _target(ds, store)
    variable = record["variable"]
    new = ~np.isin(slots, _present(record))
    outside = (slots >= group[variable].shape[0]) if slot_range is None else (
        (slots < slot_range[0]) | (slots >= slot_range[1]))
    if (new & outside).any():
        raise ArchiveError(f"{store}: time {pd.DatetimeIndex(ds['time'].values)[new & outside][0]} is outside "
                           "the slots reserved for this writer (its file name and content disagree on the time?)")
    _write_regions(group[variable], slots[new], _values(ds, group[variable])[new])
    return pd.DatetimeIndex(ds["time"].values)[new]


def commit(store: str | os.PathLike, times: Sequence) -> int:
    """Mark staged ``times`` as present (one atomic write); return how many were new. The caller holds
    :func:`lock`."""
    store = Path(store)
    record = _record(store)
    slots = _slots_of(record, pd.DatetimeIndex(times), store)
    present = _present(record)
    new = np.setdiff1d(slots, present)
    if new.size:
        _commit(store, dict(record, slots=max(record["slots"], int(slots.max()) + 1),
                            present=_ranges(np.union1d(present, new))))
    return int(new.size)


def _clean_leftovers(store: Path) -> None:
    """Remove temporary folders of creations that were killed (only a lock holder creates)."""
    for leftover in store.parent.glob(f".{store.name}.tmp-*"):
        log.warning("removing %s, left by an archive creation that did not finish", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _create(ds: xr.Dataset, store: Path) -> int:
    variable = data_variables(ds)[0]
    if len(data_variables(ds)) != 1:
        raise ArchiveError(f"{store}: an archive holds one variable, got {data_variables(ds)}")
    step, first = time_step(ds), pd.Timestamp(ds["time"].values.min())
    origin = first - ((first - EPOCH) // step) * step
    record = {"format": FORMAT, "variable": variable, "t0": str(origin), "step": str(step),
              "slots": 0, "present": [], "time_attrs": dict(ds["time"].attrs)}
    slots = _slots_of(record, pd.DatetimeIndex(ds["time"].values), store)
    tmp = store.with_name(f".{store.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _skeleton(ds, variable).to_zarr(tmp, mode="w", compute=False, consolidated=False, zarr_format=2,
                                        encoding=_encoding(ds, variable))
        group = zarr.open_group(str(tmp), mode="r+")
        added = _write_slots(ds, group, record, slots, tmp)
        tmp.rename(store)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("created archive %s with %d frames", store, added)
    return added


def _skeleton(ds: xr.Dataset, variable: str) -> xr.Dataset:
    """The store's layout: coordinates and attributes as in ``ds``, the variable a lazy one-slot
    placeholder (never written; :func:`_write_slots` resizes the array to the slots it needs)."""
    import dask.array as da

    var = ds[variable]
    empty = da.full((1,) + var.shape[1:], np.nan, dtype="f4", chunks=(1,) + var.shape[1:])
    out = ds.drop_vars([variable, "time"]).drop_dims("time", errors="ignore")
    out[variable] = xr.DataArray(empty, dims=var.dims, attrs=var.attrs)
    return out


def _encoding(ds: xr.Dataset, variable: str) -> dict:
    var = ds[variable]
    enc: dict = {variable: {"dtype": "float32", "chunks": (time_chunk(ds),) + tuple(var.shape[1:]),
                            "_FillValue": np.nan}}
    for name in ("x", "y", "lat", "lon"):
        if name in ds.variables:
            enc[name] = {"_FillValue": None}
    return enc


def _target(ds: xr.Dataset, store: Path) -> tuple[zarr.Group, dict, np.ndarray]:
    """The store's group, commit record and the slots of ``ds``'s times, after checking that ``ds``
    fits the archive (grid, variable, time step)."""
    current = open_archive(store, validate_model=False)
    problem = Grid.of(current).same_as(Grid.of(ds))
    if problem:
        raise ArchiveError(f"{store}: refusing data on another grid: {problem}; regrid it first (nowcast regrid)")
    if set(data_variables(ds)) != set(data_variables(current)):
        raise ArchiveError(f"{store}: variables {data_variables(ds)} differ from the archive's "
                           f"{data_variables(current)}")
    if time_step(ds) != time_step(current):
        raise ArchiveError(f"{store}: time step {time_step(ds)} differs from the archive's {time_step(current)}")
    record = _record(store)
    return (zarr.open_group(str(store), mode="r+"), record,
            _slots_of(record, pd.DatetimeIndex(ds["time"].values), store))


def _values(ds: xr.Dataset, array: zarr.Array) -> np.ndarray:
    """The data variable of ``ds`` as float32 in the stored dimension order."""
    var = ds[data_variables(ds)[0]]
    return var.transpose(*array.attrs["_ARRAY_DIMENSIONS"]).values.astype("f4", copy=False)


def _write_slots(ds: xr.Dataset, group: zarr.Group, record: dict, slots: np.ndarray, store: Path) -> int:
    """Write the frames of ``ds`` not yet present into ``slots``, then commit them (the last store write)."""
    present = _present(record)
    new = ~np.isin(slots, present)
    if not new.any():
        return 0
    array = group[record["variable"]]
    needed = int(slots.max()) + 1
    if array.shape[0] < needed:
        array.resize((needed,) + array.shape[1:])
    _write_regions(array, slots[new], _values(ds, array)[new])
    _commit(store, dict(record, slots=max(record["slots"], needed), present=_ranges(np.union1d(present, slots[new]))))
    log.info("wrote %d frames into %s", int(new.sum()), store)
    return int(new.sum())


def slots(store: str | os.PathLike, times: Sequence) -> np.ndarray:
    """Slot index of each of ``times`` on the archive's axis."""
    return _slots_of(_record(Path(store)), pd.DatetimeIndex(times), Path(store))


def chunk_frames(store: str | os.PathLike) -> int:
    """Frames per stored chunk along time (parallel writers split the axis at multiples of it)."""
    record = _record(Path(store))
    return int(zarr.open_group(str(store), mode="r")[record["variable"]].chunks[0])


def _commit(store: Path, record: dict) -> None:
    """Store the commit record: one atomic replace of the group's ``.zattrs`` (zarr itself would also
    rewrite ``.zgroup`` alongside, two writes instead of one)."""
    path = store / ".zattrs"
    attrs = json.loads(path.read_text()) if path.exists() else {}
    attrs[RECORD] = record
    write_text_atomic(path, json.dumps(attrs, indent=2))


def _write_regions(array: zarr.Array, slots: np.ndarray, values: np.ndarray) -> None:
    """Write frames into their slots, one contiguous run of slots at a time (whole chunks where possible)."""
    order = np.argsort(slots)
    slots, values = slots[order], values[order]
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    for run_slots, run_values in zip(np.split(slots, breaks), np.split(values, breaks)):
        array[int(run_slots[0]):int(run_slots[-1]) + 1] = run_values


__all__ = ["ArchiveError", "ArchiveLocked", "SchemaError", "exists", "open_archive", "write", "times",
           "time_chunk", "lock", "check_writable", "reserve", "stage", "commit", "slots", "chunk_frames"]
