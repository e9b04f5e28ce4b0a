"""Bureau of Meteorology (Australia) Rainfields 3 radar accumulations (CF NetCDF4).

``precipitation(y, x)`` is int16 with ``scale_factor`` 0.05 and a fill value,
in kg m-2 (mm) accumulated from ``start_time`` to ``valid_time``; ``x``/``y``
are in km in the Albers equal-area projection of the ``proj`` grid mapping,
centred on the radar.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from nowcast.netcdf_lock import NETCDF_LOCK
from nowcast.sources import SourceError
from nowcast.sources.common import file_time, radar_dataset, reading

_UNIT_TO_M = {"km": 1000.0, "m": 1.0, "metre": 1.0, "meter": 1.0}


@functools.lru_cache(maxsize=8)
def _crs_from_cf(items: tuple) -> pyproj.CRS:
    """``CRS.from_cf`` of a grid mapping, cached: pyproj's datum lookup takes ~0.4 s a call."""
    return pyproj.CRS.from_cf(dict(items))


def _hashable(value):
    return tuple(np.ravel(value).tolist()) if np.ndim(value) else value


def bom_time(path) -> pd.Timestamp:
    """Valid time (UTC, end of the accumulation) from the file name or ``valid_time``."""
    return file_time(path, r"_(\d{8}_\d{6})\.", "%Y%m%d_%H%M%S", "Rainfields NetCDF file", _valid_time)


def _valid_time(path: Path) -> pd.Timestamp:
    with NETCDF_LOCK, xr.open_dataset(path, lock=NETCDF_LOCK) as ds:
        return pd.Timestamp(ds["valid_time"].values)


def open_bom(path, *, coarsen: int = 1) -> xr.Dataset:
    """Read one Rainfields 3 file as ``rainrate`` (mm h-1).

    pysteps' ``import_bom_rf3`` rebuilds the projection as a PROJ string with
    three decimals and no ellipsoid; we take the file's own CF grid mapping
    (pyproj ``CRS.from_cf``), put ``x``/``y`` in metres, and divide the
    accumulation by its period (``valid_time - start_time``).
    """
    path = Path(path)
    with (reading(path, "Rainfields NetCDF file"), NETCDF_LOCK,
          xr.open_dataset(path, mask_and_scale=True, lock=NETCDF_LOCK) as ds):
        if "precipitation" not in ds or "proj" not in ds:
            raise SourceError(path, "no 'precipitation' variable with a 'proj' grid mapping")
        precip = ds["precipitation"]
        units = precip.attrs.get("units", "")
        if units not in ("kg m-2", "mm"):
            raise SourceError(path, f"precipitation in {units!r}, expected 'kg m-2' or 'mm'")
        crs = _crs_from_cf(tuple(sorted((k, _hashable(v)) for k, v in ds["proj"].attrs.items())))
        factor = {axis: _UNIT_TO_M.get(ds[axis].attrs.get("units", "m"), 1.0) for axis in ("x", "y")}
        x, y = ds["x"].values * factor["x"], ds["y"].values * factor["y"]
        # The stored x/y are each cell's west and north edges, not its centre: the 512 x 512 cells of
        # 0.5 km run x = -128 .. 127.5 km and y = 128 .. -127.5 km, which as edges is exactly the
        # [-128, 128] km square centred on the radar (the projection origin) and as centres would be
        # a square off the radar by a quarter cell for no reason. pysteps reads them the same way.
        # The file has no bounds or cell-method attributes to say otherwise.
        x = x + abs(x[1] - x[0]) / 2
        y = y - abs(y[1] - y[0]) / 2
        valid = pd.Timestamp(ds["valid_time"].values)
        start = pd.Timestamp(ds["start_time"].values)
        values = precip.transpose("y", "x").values.astype("f4")
        institution = ds.attrs.get("institution", "Bureau of Meteorology")
        station = ds.attrs.get("station_name", "")
        product = ds.attrs.get("title", "Rainfields 3")
    if y[0] < y[-1]:  # rows run south to north: flip to north-up
        values, y = values[::-1], y[::-1]
    period = valid - start
    return radar_dataset(
        path, values, time=valid, x=x, y=y, crs=crs, quantity="accumulation", accumulation=period,
        source=f"{institution} {product} ({station})".strip(), time_step=period, coarsen=coarsen,
        attrs={"institution": institution, "station_name": station},
    )

