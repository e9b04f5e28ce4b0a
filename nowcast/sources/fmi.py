"""FMI (Finnish Meteorological Institute) radar composites: gzipped PGM and GeoTIFF.

Both carry corrected reflectivity as 8-bit counts, dBZ = DN / 2 - 32, with
DN 255 = no data and DN 0 = undetect. FMI converts to rain rate with
Z = 223 R^1.53 (the relation pysteps also uses for these files).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.sources import SourceError
from nowcast.sources.common import centres, file_time, radar_dataset, reading

FMI_ZR = (223.0, 1.53)
INSTITUTION = "Finnish Meteorological Institute"
HEADER_BYTES = 16384
_NAME_TIME = r"^(\d{12})_"


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _pgm_header(path: Path) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
    """The '#' comment lines of a (gzipped) PGM header as ``{key: values}``, and its radar sites."""
    opener = gzip.open if _gzipped(path) else open
    header: dict[str, list[str]] = {}
    sites: dict[str, tuple[float, float]] = {}
    with opener(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)  # the comment block is ~1 KB; line-by-line gzip reads are slow
    magic, *lines = head.split(b"\n")
    if magic.strip() != b"P5":
        raise SourceError(path, f"not a binary PGM (magic {magic[:8]!r}, expected b'P5')")
    for line in lines:
        if not line.startswith(b"#"):
            break
        key, *values = line[1:].decode("ascii", "replace").split() or [""]
        if key == "radar" and len(values) == 4:
            sites[values[0]] = (float(values[2]), float(values[3]))
        elif key and values:
            header.setdefault(key, values)
    return header, sites


def pgm_time(path) -> pd.Timestamp:
    """Observation time (UTC) of an FMI PGM file, from its name or its header."""
    return file_time(path, _NAME_TIME, "%Y%m%d%H%M", "FMI PGM file",
                     lambda p: pd.to_datetime(_pgm_header(p)[0]["obstime"][0], format="%Y%m%d%H%M"))


def open_fmi_pgm(path, *, zr=None, coarsen: int = 1) -> xr.Dataset:
    """Read one FMI PGM composite (``.pgm`` or ``.pgm.gz``).

    Decoding and georeferencing come from pysteps' ``import_fmi_pgm`` (right
    for these files: polar stereographic, lon_0 25E, lat_ts 60N, sphere
    R = 6371288 m, with the false origin FMI leaves out of the header); we add
    the time, the undetect mask and the CF grid mapping pysteps does not keep.

    Args:
        path: the file.
        zr: None keeps ``reflectivity`` (dBZ); ``"source"``/True converts to
            ``rainrate`` with FMI's Z = 223 R^1.53, ``"marshall-palmer"`` with
            Z = 200 R^1.6, or a pair ``(a, b)``.
        coarsen: block-average factor.
    """
    from pysteps.io.importers import import_fmi_pgm

    path = Path(path)
    with reading(path, "FMI PGM file"):
        header, sites = _pgm_header(path)
        dbz, _, meta = import_fmi_pgm(str(path), gzipped=_gzipped(path), dtype="float32")
        if "projection" not in meta:
            raise SourceError(path, "PGM header has no stereographic projection block")
        time = pd.Timestamp(pd.to_datetime(header["obstime"][0], format="%Y%m%d%H%M"))
    ny, nx = dbz.shape
    x = centres(meta["x1"], meta["xpixelsize"], nx)
    y = centres(meta["y2"], -meta["ypixelsize"], ny)
    undetect = dbz == -32.0  # DN 0
    return radar_dataset(
        path, dbz, time=time, x=x, y=y, crs=meta["projection"], quantity="reflectivity",
        source=f"{INSTITUTION} radar composite (PGM, {header.get('productname', ['?'])[0]})",
        time_step="5min", undetect=undetect, zr=zr, documented_zr=FMI_ZR, coarsen=coarsen,
        attrs={"institution": INSTITUTION, "radars": " ".join(sites)},
    )


def radar_sites(path) -> dict[str, tuple[float, float]]:
    """Radar sites named in an FMI PGM header: ``{code: (lon, lat)}`` in degrees."""
    path = Path(path)
    with reading(path, "FMI PGM file"):
        return _pgm_header(path)[1]


def _geotiff_items(tags: dict) -> dict[str, str]:
    """FMI's GDAL metadata items (Observation time, Gain, Offset, Nodata, Undetect)."""
    xml = tags.get("GDAL_METADATA", "")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r'<Item name="([^"]+)"[^>]*>([^<]*)</Item>', xml)}


def geotiff_time(path) -> pd.Timestamp:
    """Observation time (UTC) of an FMI GeoTIFF, from its name or its metadata."""
    return file_time(path, _NAME_TIME, "%Y%m%d%H%M", "FMI GeoTIFF", _geotiff_header_time)


def _geotiff_header_time(path: Path) -> pd.Timestamp:
    import rasterio

    with rasterio.open(path) as src:
        return pd.to_datetime(_geotiff_items(src.tags())["Observation time"], format="%Y%m%d%H%M")


def open_fmi_geotiff(path, *, zr=None, coarsen: int = 1) -> xr.Dataset:
    """Read one FMI GeoTIFF composite (EPSG:3067, 250 m).

    pysteps' ``import_fmi_geotiff`` needs GDAL's Python bindings; rasterio
    reads the same file, its CRS and geotransform. Gain, offset, no-data and
    undetect come from the file's GDAL metadata. Options as
    :func:`open_fmi_pgm`.
    """
    import pyproj
    import rasterio

    path = Path(path)
    with reading(path, "FMI GeoTIFF"), rasterio.open(path) as src:
        items = _geotiff_items(src.tags())
        counts = src.read(1)
        transform, width, height = src.transform, src.width, src.height
        crs = f"EPSG:{src.crs.to_epsg()}" if src.crs and src.crs.to_epsg() else pyproj.CRS.from_wkt(src.crs.to_wkt())
        time = (pd.Timestamp(pd.to_datetime(items["Observation time"], format="%Y%m%d%H%M"))
                if "Observation time" in items else geotiff_time(path))
    if transform.b != 0 or transform.d != 0:
        raise SourceError(path, "rotated geotransform; only north-up grids are supported")
    gain, offset = float(items.get("Gain", 0.5)), float(items.get("Offset", -32.0))
    nodata, undetect_dn = int(float(items.get("Nodata", 255))), int(float(items.get("Undetect", 0)))
    dbz = counts.astype("f4") * np.float32(gain) + np.float32(offset)
    dbz[counts == nodata] = np.nan
    x = centres(transform.c, transform.a, width)
    y = centres(transform.f, transform.e, height)
    if transform.e > 0:  # south-up file: flip to north-up
        dbz, counts, y = dbz[::-1], counts[::-1], y[::-1]
    return radar_dataset(
        path, dbz, time=time, x=x, y=y, crs=crs, quantity="reflectivity",
        source=f"{INSTITUTION} radar composite (GeoTIFF)", time_step="5min",
        undetect=counts == undetect_dn, zr=zr, documented_zr=FMI_ZR, coarsen=coarsen,
        attrs={"institution": INSTITUTION},
    )
