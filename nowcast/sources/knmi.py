"""KNMI (Netherlands) radar products in KNMI's own HDF5 layout (not ODIM).

``image1/image_data`` holds unsigned counts with a calibration formula
(``GEO=0.01*PV+0.0``: hundredths of mm for the 5-min accumulation) and
missing/outside codes; ``geographic`` gives the grid (offsets and pixel sizes,
in km) and a PROJ string whose ellipsoid is also in km.
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from nowcast.sources import SourceError
from nowcast.sources.common import centres, file_time, parse_time, radar_dataset, reading

INSTITUTION = "KNMI - Royal Netherlands Meteorological Institute"
_CALIBRATION = re.compile(r"GEO\s*=\s*([-+\d.eE]+)\s*\*\s*PV\s*(?:([-+])\s*([\d.eE+-]+))?")
_PROJ_TOKEN = re.compile(r"\+?(\w+)=(\S+)")
# PROJ parameters that are lengths (scaled with the grid when the file states km).
_LENGTHS = ("a", "b", "R", "x_0", "y_0")


def _text(value) -> str:
    value = value[0] if isinstance(value, np.ndarray) and value.shape else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(attrs, key: str) -> float:
    return float(np.asarray(attrs[key]).ravel()[0])


def _product_time(text: str) -> pd.Timestamp:
    return parse_time(text, "%d-%b-%Y;%H:%M:%S.%f")


def knmi_time(path) -> pd.Timestamp:
    """End of the accumulation (UTC), from the file name or the ``overview`` group."""
    return file_time(path, r"_(\d{12})\.h5$", "%Y%m%d%H%M", "KNMI HDF5 file", _overview_end)


def _overview_end(path: Path) -> pd.Timestamp:
    with h5py.File(path, "r") as f:
        return _product_time(_text(f["overview"].attrs["product_datetime_end"]))


@functools.lru_cache(maxsize=8)
def _metric_proj(proj: str, km: bool) -> str:
    """KNMI's PROJ string in metres: its ellipsoid axes are in km when the grid is."""
    params = dict(_PROJ_TOKEN.findall(proj))
    if km:
        params.update({k: repr(float(v) * 1000.0) for k, v in params.items() if k in _LENGTHS})
    return " ".join(f"+{k}={v}" for k, v in params.items()) + " +units=m +no_defs"


def _inflated(dataset) -> np.ndarray:
    """All of an h5py dataset. Stored as one deflated chunk (KNMI's images), the chunk is read raw and
    inflated by zlib into its known size: 4.5 instead of 6.9 ms a file with the open (CPU, 20 files)
    through HDF5's deflate filter, which starts its output buffer at the compressed size (20-60 KB
    for 1 MB here) and doubles it as it fills, then copies the chunk out."""
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if dataset.chunks != dataset.shape or filters != [h5py.h5z.FILTER_DEFLATE] or dataset.id.get_num_chunks() != 1:
        return dataset[...]
    mask, raw = dataset.id.read_direct_chunk((0,) * dataset.ndim)
    if mask:  # the filter was skipped for this chunk: it is stored as is
        return dataset[...]
    size = dataset.size * dataset.dtype.itemsize
    return np.frombuffer(zlib.decompress(raw, bufsize=size), dtype=dataset.dtype, count=dataset.size).reshape(
        dataset.shape)


def open_knmi(path, *, zr=None, coarsen: int = 1) -> xr.Dataset:
    """Read one KNMI HDF5 radar file as ``rainrate`` (mm h-1), or ``reflectivity`` (dBZ).

    pysteps' ``import_knmi_hdf5`` hard-codes the calibration (0.01 mm) and
    reports the grid in km with a km ellipsoid, which breaks every other CRS
    tool; we apply the file's own calibration formula and missing codes, and
    express grid and ellipsoid in metres. Accumulations become rates over the
    period between ``product_datetime_start`` and ``_end``.

    Args:
        zr: for reflectivity products, see :func:`nowcast.sources.fmi.open_fmi_pgm`.
        coarsen: block-average factor.
    """
    path = Path(path)
    with reading(path, "KNMI HDF5 file"), h5py.File(path, "r") as f:
        image, geo = f["image1"], f["geographic"]
        calibration = image["calibration"].attrs
        match = _CALIBRATION.search(_text(calibration["calibration_formulas"]))
        if not match:
            raise SourceError(path, f"unknown calibration formula {_text(calibration['calibration_formulas'])!r}")
        gain = float(match.group(1))
        offset = float(match.group(3) or 0.0) * (-1.0 if match.group(2) == "-" else 1.0)
        counts = _inflated(image["image_data"])
        missing = [int(_number(calibration, k)) for k in ("calibration_missing_data", "calibration_out_of_image")
                   if k in calibration]
        parameter = _text(image.attrs.get("image_geo_parameter", b"ACCUMULATED_PRECIPITATION_[MM]")).upper()
        overview = f["overview"].attrs
        end = _product_time(_text(overview["product_datetime_end"]))
        start = _product_time(_text(overview["product_datetime_start"]))
        nx, ny = int(_number(geo.attrs, "geo_number_columns")), int(_number(geo.attrs, "geo_number_rows"))
        km = _text(geo.attrs.get("geo_dim_pixel", b"KM,KM")).upper().startswith("KM")
        scale = 1000.0 if km else 1.0
        dx = _number(geo.attrs, "geo_pixel_size_x") * scale
        dy = _number(geo.attrs, "geo_pixel_size_y") * scale
        x0 = _number(geo.attrs, "geo_column_offset") * dx
        y0 = _number(geo.attrs, "geo_row_offset") * dy
        proj = _metric_proj(_text(geo["map_projection"].attrs["projection_proj4_params"]), km)
        radars = [f[name].attrs for name in f if name.startswith("radar")]
        sites = {_text(attrs["radar_name"]): tuple(float(v) for v in attrs["radar_location"])
                 for attrs in radars if "radar_location" in attrs}
    if counts.shape != (ny, nx):
        raise SourceError(path, f"image shape {counts.shape} differs from the header's {(ny, nx)}")
    values = counts.astype("f4")
    values *= np.float32(gain)
    if offset or gain < 0:  # adding +0.0 changes no product of a count and a gain >= 0
        values += np.float32(offset)
    for code in set(missing):  # three quarters of the grid lie outside the radars' range
        np.copyto(values, np.float32(np.nan), where=counts == code)
    x, y = centres(x0, dx, nx), centres(y0, dy, ny)
    if dy > 0:  # rows run south to north: flip to north-up
        values, y = values[::-1], y[::-1]
    quantity = "reflectivity" if "DBZ" in parameter else "accumulation"
    return radar_dataset(
        path, values, time=end, x=x, y=y, crs=proj, quantity=quantity,
        source=f"{INSTITUTION} radar product {path.name.rsplit('_', 1)[0]}",
        time_step=end - start if end > start else "5min", accumulation=end - start, zr=zr, coarsen=coarsen,
        attrs={"institution": INSTITUTION,
               "radars": "; ".join(f"{n} ({lon:.3f}E {lat:.3f}N)" for n, (lon, lat) in sites.items())},
    )
