"""The archive: data-model sequences in a Zarr store, chunked along time.

Writes are idempotent (times already archived are skipped) and atomic for
readers: a new store is written to a temporary folder and renamed into
place; an append grows the arrays first and only then moves the store's
commit marker (the attribute ``nowcast_committed``, a count of time steps).
Readers see the committed prefix only, so an interrupted append leaves the
archive as it was, and the next append overwrites the uncommitted tail.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from nowcast.grids import Grid
from nowcast.schema import SchemaError, data_variables, validate

log = logging.getLogger(__name__)

COMMITTED = "nowcast_committed"
TARGET_CHUNK_BYTES = 4 * 2**20
TIME_ENCODING = {"units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian",
                 "dtype": "int64"}


class ArchiveError(RuntimeError):
    """The archive cannot take or give what was asked (names the store and why)."""


def time_chunk(ds: xr.Dataset) -> int:
    """Frames per Zarr chunk: about 4 MiB of float32, at least one frame."""
    frame_bytes = 4 * int(np.prod([n for d, n in ds.sizes.items() if d != "time"]))
    return int(max(1, min(2048, TARGET_CHUNK_BYTES // max(frame_bytes, 1))))


def _encoding(ds: xr.Dataset) -> dict:
    chunk = time_chunk(ds)
    enc: dict = {"time": dict(TIME_ENCODING)}
    for name in data_variables(ds):
        var = ds[name]
        enc[name] = {"dtype": "float32", "chunks": (chunk,) + tuple(var.shape[1:]), "_FillValue": np.nan}
    for name in ("x", "y", "lat", "lon"):
        enc[name] = {"_FillValue": None}
    return enc


def _committed(store: Path) -> int:
    return int(zarr.open_group(str(store), mode="r").attrs[COMMITTED])


def exists(store: str | os.PathLike) -> bool:
    """True if ``store`` holds a committed nowcast archive."""
    try:
        _committed(Path(store))
        return True
    except Exception:  # noqa: BLE001 - any unreadable store is "not an archive"
        return False


def open_archive(store: str | os.PathLike, *, validate_model: bool = True) -> xr.Dataset:
    """Open the committed part of an archive lazily (dask arrays, chunked along time)."""
    store = Path(store)
    if not store.exists():
        raise ArchiveError(f"{store}: no such archive")
    try:
        n = _committed(store)
    except Exception as err:  # noqa: BLE001 - report any store damage the same way
        raise ArchiveError(f"{store}: not a nowcast archive ({err})") from err
    ds = xr.open_zarr(store, consolidated=False).isel(time=slice(0, n))
    ds.attrs.pop(COMMITTED, None)
    return validate(ds) if validate_model else ds


def write(ds: xr.Dataset, store: str | os.PathLike) -> int:
    """Write or append ``ds`` to the archive at ``store``; return frames added.

    Times already in the archive are skipped (re-writing is a no-op). New
    times must come after the archive's last time. The grid (CRS, shape,
    coordinates) and variables must match the archive's.

    Raises:
        ArchiveError: on a grid/variable mismatch or out-of-order times.
    """
    validate(ds, forecast=False)
    store = Path(store)
    if not ds.indexes["time"].is_monotonic_increasing:  # sortby copies every frame
        ds = ds.sortby("time")
    if not exists(store):
        if store.exists():
            raise ArchiveError(f"{store}: exists but is not a nowcast archive; refusing to overwrite")
        _create(ds, store)
        return ds.sizes["time"]
    return _append(ds, store)


def _create(ds: xr.Dataset, store: Path) -> None:
    tmp = store.with_name(f".{store.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out = ds.copy()
        out.attrs[COMMITTED] = ds.sizes["time"]
        out.to_zarr(tmp, mode="w", encoding=_encoding(ds), consolidated=False, zarr_format=2)
        tmp.rename(store)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("created archive %s with %d frames", store, ds.sizes["time"])


def _append(ds: xr.Dataset, store: Path) -> int:
    current = open_archive(store, validate_model=False)
    problem = Grid.of(current).same_as(Grid.of(ds))
    if problem:
        raise ArchiveError(f"{store}: refusing data on another grid: {problem}; "
                           "regrid it first (nowcast regrid)")
    if set(data_variables(ds)) != set(data_variables(current)):
        raise ArchiveError(f"{store}: variables {data_variables(ds)} differ from the archive's "
                           f"{data_variables(current)}")
    have = pd.DatetimeIndex(current["time"].values)
    archived = pd.DatetimeIndex(ds["time"].values).isin(have)
    new = ds.sel(time=~archived) if archived.any() else ds  # sel copies every frame
    if new.sizes["time"] == 0:
        return 0
    first_new = pd.Timestamp(new["time"].values[0])
    if len(have) and first_new <= have[-1]:
        raise ArchiveError(f"{store}: cannot insert {first_new} before the archive's last time {have[-1]}; "
                           "write times in order or into a new archive")
    n = len(have)
    group = zarr.open_group(str(store), mode="r+")
    for name, arr in group.arrays():
        if name in current.variables and "time" in current[name].dims and arr.shape[0] != n:
            arr.resize((n,) + arr.shape[1:])
    out = new.drop_vars([v for v in ("lat", "lon", "crs", "x", "y", "flow") if v in new.variables])
    # to_zarr(append_dim=...) replaces the group's attributes before writing
    # data: hand it the current ones (old commit marker included), or a crash
    # during the append would leave a store without its marker.
    out.attrs = dict(group.attrs)
    out.to_zarr(store, append_dim="time", consolidated=False)
    group.attrs[COMMITTED] = n + new.sizes["time"]
    log.info("appended %d frames to %s", new.sizes["time"], store)
    return new.sizes["time"]


def times(store: str | os.PathLike) -> pd.DatetimeIndex:
    """Committed times of an archive (cheap: reads the time coordinate only)."""
    return pd.DatetimeIndex(open_archive(store, validate_model=False)["time"].values)


__all__ = ["ArchiveError", "SchemaError", "exists", "open_archive", "write", "times", "time_chunk"]
