"""OPERA and other ODIM_H5 Cartesian composites (object COMP / IMAGE).

Values are ``raw * gain + offset`` with ``nodata`` (outside coverage: NaN)
and ``undetect`` (measured, nothing detected: 0 for rates and
accumulations) codes, from the ``what`` group of the data or of its dataset.
The projection is ``where/projdef``; the corner coordinates (``UL_lon``,
``UL_lat`` ...) are the outer corners of the corner pixels.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

from nowcast.sources import SourceError
from nowcast.sources.common import centres, file_time, parse_time, radar_dataset, reading

QUANTITIES = {"RATE": "rainrate", "ACRR": "accumulation", "DBZH": "reflectivity", "TH": "reflectivity"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _when(attrs, date: str, time: str) -> pd.Timestamp:
    return parse_time(_text(attrs[date]) + _text(attrs[time]), "%Y%m%d%H%M%S")


def odim_time(path) -> pd.Timestamp:
    """Nominal time (UTC) from an OPERA file name or the root ``what`` group."""
    return file_time(path, r"_(\d{14})\.(?:hdf|h5)$", "%Y%m%d%H%M%S", "ODIM_H5 file", _root_time)


def _root_time(path: Path) -> pd.Timestamp:
    import h5py

    with h5py.File(path, "r") as f:
        return _when(f["what"].attrs, "date", "time")


def _find(f, qty: str | None):
    """The ``(data group, merged what attributes)`` of quantity ``qty`` (default RATE, ACRR, DBZH)."""
    found = {}
    for name, dataset in sorted(f.items()):
        if not name.startswith("dataset"):
            continue
        outer = dict(dataset["what"].attrs) if "what" in dataset else {}
        for dname, data in sorted(dataset.items()):
            if dname.startswith("data") and "data" in data:
                what = {**outer, **(dict(data["what"].attrs) if "what" in data else {})}
                found.setdefault(_text(what.get("quantity", b"")), (data, what))
    wanted = [qty.upper()] if qty else [q for q in QUANTITIES if q in found]
    for name in wanted:
        if name in found:
            return name, *found[name]
    return None, None, sorted(found)


def open_odim(path, *, qty: str | None = None, zr=None, coarsen: int = 1) -> xr.Dataset:
    """Read one ODIM_H5 composite as ``rainrate`` (mm h-1) or ``reflectivity`` (dBZ).

    pysteps' ``import_odim_hdf5`` decodes every quantity in float64, gives
    undetect in reflectivity a fixed -30 dBZ and drops the projection to a
    PROJ string; we read only the requested quantity and keep ``projdef`` as a
    CF grid mapping (LAEA for OPERA).

    Args:
        qty: ODIM quantity (RATE, ACRR, DBZH, TH); default the first present
            of RATE, ACRR, DBZH, TH.
        zr: for reflectivity, see :func:`nowcast.sources.fmi.open_fmi_pgm`.
        coarsen: block-average factor.
    """
    import h5py

    path = Path(path)
    with reading(path, "ODIM_H5 file"), h5py.File(path, "r") as f:
        name, data, what = _find(f, qty)
        if name is None:
            raise SourceError(path, f"no quantity {qty or 'RATE/ACRR/DBZH/TH'} in the file (has {what})")
        raw = data["data"][...]
        where = dict(f["where"].attrs)
        for dataset in (k for k in f if k.startswith("dataset") and "where" in f[k]):
            where = {**dict(f[dataset]["where"].attrs), **where}
        root_what = dict(f["what"].attrs)
        how = dict(f["how"].attrs) if "how" in f else {}
    gain, offset = float(what.get("gain", 1.0)), float(what.get("offset", 0.0))
    nodata = raw == what.get("nodata", np.nan)
    undetect = raw == what.get("undetect", np.nan)
    values = raw if raw.dtype == "f8" else raw.astype("f8")  # raw is ours: scale it in place
    values *= gain
    values += offset
    values[nodata] = np.nan
    projdef = _text(where["projdef"])
    ny, nx = int(where["ysize"]), int(where["xsize"])
    if raw.shape != (ny, nx):
        raise SourceError(path, f"data shape {raw.shape} differs from where/xsize, ysize {(ny, nx)}")
    corners = ("UL_lon", "UL_lat") if "UL_lon" in where else ("LL_lon", "LL_lat", "UR_lon", "UR_lat")
    left, top = _west_north(projdef, tuple(float(where[k]) for k in corners))
    dx, dy = float(where["xscale"]), float(where["yscale"])
    time = _when(root_what, "date", "time")
    accumulation = None
    if QUANTITIES.get(name) == "accumulation":
        accumulation = _when(what, "enddate", "endtime") - _when(what, "startdate", "starttime")
    step = _nominal_step(what, accumulation)
    source = f"ODIM_H5 {_text(root_what.get('object', b'COMP'))} {name} from {_text(root_what.get('source', b'?'))}"
    return radar_dataset(
        path, values.astype("f4"), time=time, x=centres(left, dx, nx), y=centres(top, -dy, ny), crs=projdef,
        quantity=QUANTITIES.get(name, "reflectivity"), source=source, time_step=step,
        accumulation=accumulation, undetect=undetect, zr=zr, coarsen=coarsen,
        attrs={"odim_quantity": name, "odim_source": _text(root_what.get("source", b"")),
               "radar_nodes": len(_text(how.get("nodes", b"")).split(",")) if "nodes" in how else 0},
    )


@functools.lru_cache(maxsize=8)
def _west_north(projdef: str, corners: tuple[float, ...]) -> tuple[float, float]:
    """West and north grid edges (m) from the upper-left corner (lon, lat), or the lower-left and
    upper-right ones, cached: building the transformer took 36 ms a file."""
    to_xy = pyproj.Transformer.from_crs("EPSG:4326", pyproj.CRS.from_proj4(projdef), always_xy=True)
    if len(corners) == 2:
        left, top = to_xy.transform(*corners)
    else:
        left, _ = to_xy.transform(*corners[:2])
        _, top = to_xy.transform(*corners[2:])
    # Snap the corner to the grid's own metre lattice (corners are stored in
    # degrees with rounding; OPERA's grid edges sit on whole metres).
    return round(left, 1), round(top, 1)


def _nominal_step(what: dict, accumulation: pd.Timedelta | None) -> pd.Timedelta:
    """Time between products: the accumulation, else the data's start-end interval, else 15 min (OPERA)."""
    if accumulation is not None and accumulation > pd.Timedelta(0):
        return accumulation
    try:
        span = _when(what, "enddate", "endtime") - _when(what, "startdate", "starttime")
    except (KeyError, ValueError):
        return pd.Timedelta("15min")
    return span if span > pd.Timedelta(0) else pd.Timedelta("15min")
