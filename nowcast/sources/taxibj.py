"""Crowd flows in the ST-ResNet (DeepST) HDF5 layout: TaxiBJ, TaxiNYC, BikeNYC.

Each file holds ``data`` (T, 2, H, W) counts per time slot and ``date`` (T,)
slot strings: ``YYYYMMDDSS`` with SS = 01..N the 1-based slot of the day
(TaxiBJ, BikeNYC), or ``YYYYMMDDHH`` with HH = 00..23 the hour (TaxiNYC).
Slots are local time. The files are concatenations of blocks that overlap
(TaxiNYC repeats slots, often as all-zero placeholders) and have gaps (TaxiNYC
lacks 2-30 September every year); the reader sorts, removes duplicates and
keeps gaps as gaps: a missing slot is an absent time, never a filled frame.

Channel meaning differs by dataset. TaxiBJ's ReadMe: ``data[i][0]`` inflow,
``data[i][1]`` outflow. TaxiNYC's ReadMe: channel 0 "new-flow" (trips
starting in the cell), channel 1 "end-flow" (trips ending in it); a trip
leaving a cell is that cell's outflow, so TaxiNYC (and BikeNYC, same
convention) are ``(outflow, inflow)``. The data model stores
``flow = (inflow, outflow)``.

Times are the start of each slot in UTC (the ST-ResNet convention; local
slot starts converted with the city's time zone, DST included: the slot
02:00 of a spring-forward day does not exist and is dropped, the repeated
01:00 of a fall-back day is taken as daylight time).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.grids import BEIJING as BEIJING_CENTRE
from nowcast.grids import Grid
from nowcast.schema import FLOW_LABELS, make_dataset
from nowcast.sources import SourceError
from nowcast.sources.common import reading

log = logging.getLogger(__name__)

# No publication gives coordinates for the 16 x 8 NYC crowd-flow grids
# (ST-ResNet, DeepST, STREED-Net and the datasets' ReadMe files only say
# "NYC, 16 x 8"), so we document our own default: 16 rows x 8 columns of
# 1.25 km in UTM 18N (EPSG:32618), centred at 73.963W 40.789N, i.e. 20 km
# north-south by 10 km east-west over Manhattan, which spans about 40.700N
# (the Battery) to 40.878N (Inwood) and 74.02W to 73.91W. Rows run north to
# south.
NYC_CENTRE = (-73.963, 40.789)
NYC_CELL_M = 1250.0


def nyc_grid(shape: tuple[int, int] = (16, 8), resolution: float = NYC_CELL_M) -> Grid:
    """Documented default georeference of the TaxiNYC / BikeNYC grid over Manhattan (EPSG:32618)."""
    return Grid.centred_on("EPSG:32618", *NYC_CENTRE, shape, resolution)


@dataclass(frozen=True)
class City:
    """What the file layout does not say about a dataset."""

    name: str
    timezone: str
    channels: tuple[str, str]  # meaning of data[:, 0] and data[:, 1]
    slot_format: str  # "slot" (1-based SS) or "hour" (HH 00..23)


BEIJING = City("TaxiBJ", "Asia/Shanghai", ("inflow", "outflow"), "slot")
NEW_YORK_TAXI = City("TaxiNYC", "America/New_York", ("outflow", "inflow"), "hour")
NEW_YORK_BIKE = City("BikeNYC", "America/New_York", ("outflow", "inflow"), "slot")

_STEP = re.compile(r"_T(\d+)_")


def _city(path: Path, shape: tuple[int, int]) -> City:
    name = path.name.upper()
    if name.startswith("BJ"):
        return BEIJING
    if name.startswith("NYC") and "TAXI" in name:
        return NEW_YORK_TAXI
    if name.startswith("NYC"):
        return NEW_YORK_BIKE
    return BEIJING if shape == (32, 32) else NEW_YORK_TAXI


def _default_grid(city: City, shape: tuple[int, int]) -> Grid:
    if city is BEIJING:  # nowcast.grids.beijing_grid() for the 32 x 32 TaxiBJ grid
        return Grid.centred_on("EPSG:32650", *BEIJING_CENTRE, shape, 1000.0)
    return nyc_grid(shape)


def _slot_starts(dates: np.ndarray, step: pd.Timedelta, slot_format: str) -> pd.DatetimeIndex:
    """Local (naive) slot start times from 'YYYYMMDDSS' / 'YYYYMMDDHH' strings."""
    days = pd.to_datetime([d[:8] for d in dates], format="%Y%m%d")
    numbers = np.array([int(d[8:]) for d in dates])
    per_day = int(pd.Timedelta("1D") / step)
    if slot_format == "auto":
        slot_format = "hour" if numbers.min() == 0 else "slot"
    index = numbers - 1 if slot_format == "slot" else numbers * int(pd.Timedelta("1h") / step)
    if index.min() < 0 or index.max() >= per_day:
        raise ValueError(f"slot numbers {numbers.min()}..{numbers.max()} do not fit {per_day} slots of {step} "
                         f"per day as {slot_format!r}")
    return days + pd.to_timedelta(index * step.value, unit="ns")


def first_time(path) -> pd.Timestamp:
    """Earliest slot start of a file (UTC), reading only its ``date`` strings."""
    import h5py

    path = Path(path)
    with reading(path, "ST-ResNet HDF5 file"), h5py.File(path, "r") as f:
        dates = np.array([d.decode() if isinstance(d, bytes) else str(d) for d in f["date"][...]])
        shape = tuple(f["data"].shape[2:])
    city = _city(path, shape)
    try:
        starts = _slot_starts(dates, _step(path, dates), city.slot_format)
    except ValueError as err:
        raise SourceError(path, str(err)) from err
    return pd.Timestamp(starts.min()).tz_localize(city.timezone, ambiguous=True, nonexistent="shift_forward") \
        .tz_convert("UTC").tz_localize(None)


def _step(path: Path, dates: np.ndarray) -> pd.Timedelta:
    match = _STEP.search(path.name)
    if match:
        return pd.Timedelta(minutes=int(match.group(1)))
    return pd.Timedelta("30min") if max(int(d[8:]) for d in dates) > 24 else pd.Timedelta("1h")


def read_holidays(path) -> list[pd.Timestamp]:
    """Dates (YYYYMMDD, one per line) of a TaxiBJ-style holiday file."""
    path = Path(path)
    with reading(path, "holiday list"):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [pd.Timestamp(pd.to_datetime(line, format="%Y%m%d")) for line in lines]


def open_taxibj(
    path,
    *,
    holidays=None,
    grid: Grid | None = None,
    timezone: str | None = None,
    channels: tuple[str, str] | None = None,
    slot_format: str | None = None,
    drop_empty: bool = True,
) -> xr.Dataset:
    """Read a whole ST-ResNet-style file as ``crowd_flow`` (counts), ``(time, flow, y, x)``.

    Args:
        holidays: a holiday file (``BJ_Holiday.txt``, ``NY_Holiday.txt``) or
            dates (local); all of them go to the ``holidays`` attribute as
            comma-separated ISO dates.
        grid: georeference of the (H, W) grid, rows north to south; default
            :func:`nowcast.grids.beijing_grid` for TaxiBJ, :func:`nyc_grid`
            for TaxiNYC / BikeNYC.
        timezone: local time zone of the slot strings (default from the city).
        channels: meaning of channels 0 and 1, e.g. ``("outflow", "inflow")``.
        slot_format: ``"slot"`` (1-based SS), ``"hour"`` (HH) or ``"auto"``.
        drop_empty: treat all-zero frames as missing (TaxiNYC uses them as
            placeholders: the spring-forward hour, 1 Sept from 02:00, one side
            of most duplicated slots); they become gaps.

    Duplicated slots: exact copies are dropped; among different frames for one
    slot, all-zero placeholders lose to non-zero frames, and of several
    non-zero frames the one with the largest total is kept (at TaxiNYC's block
    seams the other is a partial count of the same hour). Counts of what was
    removed are in the ``cleaning`` attribute.
    """
    import h5py

    path = Path(path)
    with reading(path, "ST-ResNet HDF5 file"), h5py.File(path, "r") as f:
        if "data" not in f or "date" not in f:
            raise SourceError(path, f"no 'data' and 'date' datasets (has {sorted(f)})")
        data = f["data"][...]
        dates = np.array([d.decode() if isinstance(d, bytes) else str(d) for d in f["date"][...]])
    if data.ndim != 4 or data.shape[1] != 2 or data.shape[0] != dates.size:
        raise SourceError(path, f"data shape {data.shape} with {dates.size} dates; expected (T, 2, H, W) and T dates")
    if dates.size == 0:
        raise SourceError(path, "no time slots")
    if any(len(d) != 10 or not d.isdigit() for d in dates):
        raise SourceError(path, "date strings are not 'YYYYMMDDSS' / 'YYYYMMDDHH'")
    shape = data.shape[2:]
    city = _city(path, shape)
    step = _step(path, dates)
    tz = timezone or city.timezone
    try:
        local = _slot_starts(dates, step, slot_format or city.slot_format)
    except ValueError as err:
        raise SourceError(path, str(err)) from err
    order = np.argsort(local.values, kind="stable")
    local, data, dates = local[order], data[order], dates[order]
    stats = {}
    empty = ~data.reshape(data.shape[0], -1).any(axis=1)
    keep = _deduplicate(local, data, empty, stats)
    if drop_empty:
        stats["empty_frames_dropped"] = int((keep & empty).sum())
        keep &= ~empty
    local, data = local[keep], data[keep]
    utc = local.tz_localize(tz, ambiguous=np.ones(local.size, bool), nonexistent="NaT")
    exists = ~utc.isna()
    stats["nonexistent_local_slots_dropped"] = int((~exists).sum())
    if (~exists).any():
        log.warning("%s: dropped %d slots at local times that do not exist (DST): %s", path.name,
                    int((~exists).sum()), ", ".join(str(t) for t in local[~exists][:5]))
    utc, data = utc[exists].tz_convert("UTC").tz_localize(None), data[exists]
    channels = channels or city.channels
    if sorted(channels) != sorted(FLOW_LABELS):
        raise ValueError(f"channels must name {FLOW_LABELS} in some order, got {channels}")
    data = data[:, [channels.index(label) for label in FLOW_LABELS]]
    grid = grid or _default_grid(city, shape)
    if grid.shape != shape:
        raise SourceError(path, f"grid {grid.shape} does not match the data's {shape}")
    cleaning = (f"{path.name}: {stats['duplicate_slots']} duplicated slots ({stats['exact_duplicates_dropped']} "
                f"exact copies and {stats['conflicting_duplicates_dropped']} smaller non-zero frames dropped), "
                f"{stats.get('empty_frames_dropped', 0)} all-zero frames and "
                f"{stats['nonexistent_local_slots_dropped']} slots at non-existent local times dropped")
    log.info(cleaning)
    attrs = {"city_dataset": city.name, "timezone": tz, "time_convention": "start of slot",
             "channel_meaning": f"file channel 0 = {channels[0]}, 1 = {channels[1]}", "cleaning": cleaning}
    if holidays is not None:
        # The whole list, not only the file's period: an archive keeps the
        # attributes of its first file, and later years need theirs.
        listed = read_holidays(holidays) if isinstance(holidays, (str, Path)) else map(pd.Timestamp, holidays)
        attrs["holidays"] = ",".join(sorted({d.date().isoformat() for d in listed}))
    return make_dataset(
        data.astype("f4"), times=utc, x=grid.x, y=grid.y, crs=grid.crs, variable="crowd_flow",
        source=f"{city.name} crowd flows", time_step=step, attrs=attrs,
    )


def _deduplicate(local: pd.DatetimeIndex, data: np.ndarray, empty: np.ndarray, stats: dict) -> np.ndarray:
    """Boolean mask keeping one frame per slot (``local`` sorted); counts go to ``stats``."""
    keep = np.ones(local.size, bool)
    exact = differing = 0
    values = local.values
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends):
        if end - start == 1:
            continue
        group = np.arange(start, end)
        keep[group] = False
        totals = data[group].reshape(group.size, -1).sum(axis=1)
        best = group[np.argmax(np.where(empty[group], -1.0, totals))]
        keep[best] = True
        for other in group[group != best]:
            if np.array_equal(data[other], data[best]):
                exact += 1
            elif not empty[other]:
                differing += 1
    stats["duplicate_slots"] = int(ends[ends - starts > 1].size)
    stats["exact_duplicates_dropped"] = exact
    stats["conflicting_duplicates_dropped"] = differing
    if differing:
        log.info("kept the larger of %d pairs of different non-zero frames for one slot", differing)
    return keep
