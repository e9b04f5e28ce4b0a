"""NOAA/NSSL MRMS PrecipRate: GRIB2, 7000 × 3500 regular lat/lon at 0.01°, 2 min.

One message per file (local NSSL table: discipline 209, category 6,
parameter 1); rain rate in mm h-1 with -3 for "no coverage". The grid runs
from 54.995N 129.995W (first point, north-west) to 20.005N 60.005W.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.sources import SourceError
from nowcast.sources.common import file_time, radar_dataset, reading

INSTITUTION = "NOAA National Severe Storms Laboratory"
ROWS_PER_BLOCK = 500


def mrms_time(path) -> pd.Timestamp:
    """Valid time (UTC) from an MRMS file name (``..._YYYYMMDD-HHMMSS.grib2``) or its GRIB header."""
    return file_time(path, r"_(\d{8}-\d{6})\.grib2", "%Y%m%d-%H%M%S", "MRMS GRIB2 file", _valid_date)


def _valid_date(path: Path) -> pd.Timestamp:
    with _grib_message(path) as msg:
        return pd.Timestamp(msg.validDate)


@contextmanager
def _grib_message(path: Path) -> Iterator:
    """The first GRIB message of ``path`` (gunzipped to a temporary file when needed)."""
    import pygrib

    with tempfile.TemporaryDirectory() as tmp:
        if path.suffix == ".gz":
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            path = plain
        grbs = pygrib.open(str(path))
        try:
            yield grbs.message(1)
        finally:
            grbs.close()


def open_mrms(path, *, coarsen: int = 1) -> xr.Dataset:
    """Read one MRMS PrecipRate file as ``rainrate`` (mm h-1) on its lat/lon grid.

    pysteps' ``import_mrms_grib`` also builds two full-resolution float64
    lat/lon meshes (400 MB) and block-averages 4 × 4 by default; we keep the
    native 0.01° grid unless ``coarsen`` is given, decode to float32 with
    negative codes (-3 no coverage) as NaN, and keep the GRIB shape of the
    earth in the CRS. Peak memory is about three float32 frames.

    Args:
        coarsen: block-average factor (4 gives pysteps' 0.04° grid); a block
            with any no-data cell is no-data.
    """
    import pyproj

    path = Path(path)
    with reading(path, "MRMS GRIB2 file"), _grib_message(path) as msg:
        if msg["gridType"] != "regular_ll":
            raise SourceError(path, f"grid type {msg['gridType']!r}, expected a regular lat/lon grid")
        ni, nj = int(msg["Ni"]), int(msg["Nj"])
        lon0, lon1 = (float(msg[k]) for k in ("longitudeOfFirstGridPointInDegrees",
                                               "longitudeOfLastGridPointInDegrees"))
        lat0, lat1 = (float(msg[k]) for k in ("latitudeOfFirstGridPointInDegrees",
                                               "latitudeOfLastGridPointInDegrees"))
        dlon, dlat = float(msg["iDirectionIncrementInDegrees"]), float(msg["jDirectionIncrementInDegrees"])
        crs = pyproj.CRS.from_dict(dict(msg.projparams, proj="longlat"))
        time = pd.Timestamp(msg.validDate)
        decoded = msg.values  # float64, pygrib decodes whole messages only
        if decoded.shape != (nj, ni):
            raise SourceError(path, f"decoded shape {decoded.shape} differs from the header's {(nj, ni)}")
        values = np.empty(decoded.shape, dtype="f4")
        for start in range(0, nj, ROWS_PER_BLOCK):  # cast in slabs to keep temporaries small
            block = decoded[start:start + ROWS_PER_BLOCK]
            values[start:start + ROWS_PER_BLOCK] = np.where(block < 0, np.nan, block)
        del decoded
    # Points from the first one and the increments (the header's last point
    # carries rounding, e.g. 299.994998 for 299.995).
    lon = lon0 + dlon * np.arange(ni) * (1.0 if lon1 > lon0 else -1.0)
    lat = lat0 + dlat * np.arange(nj) * (1.0 if lat1 > lat0 else -1.0)
    if abs(lon[-1] - lon1) > dlon / 2 or abs(lat[-1] - lat1) > dlat / 2:
        raise SourceError(path, f"grid increments do not reach the last point ({lon1}, {lat1})")
    lon = (lon + 180.0) % 360.0 - 180.0
    if lat[0] < lat[-1]:  # rows run south to north: flip to north-up
        values, lat = values[::-1], lat[::-1]
    return radar_dataset(
        path, values, time=time, x=lon, y=lat, crs=crs, quantity="rainrate",
        source=f"{INSTITUTION} MRMS PrecipRate", time_step="2min", coarsen=coarsen,
        attrs={"institution": INSTITUTION},
    )
