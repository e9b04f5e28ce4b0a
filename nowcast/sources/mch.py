"""MeteoSwiss radar composites: 8-bit palette GIFs on the Swiss CCS4 grid.

The GIFs carry no georeference. The CCS4 domain is 710 × 640 cells of 1 km
in Swiss LV03 (EPSG:21781, an oblique Mercator on the Bessel ellipsoid),
x 255–965 km, y −160–480 km, first row north. File names are
``PPPyyDDDHHMMf_AAAAA.801.gif``: product, year, day of year, hour, minute
(UTC, end of the accumulation), a version letter and the accumulation in
minutes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.sources import SourceError
from nowcast.sources.common import centres, radar_dataset, reading

LV03 = "EPSG:21781"
CCS4_SHAPE = (640, 710)
CCS4_LEFT, CCS4_TOP, CCS4_CELL = 255000.0, 480000.0, 1000.0
INSTITUTION = "MeteoSwiss"
_NAME = re.compile(r"^(?P<product>[A-Z]{3})(?P<time>\d{9})(?P<version>\w)?_(?P<minutes>\d{5})")
# Products that are accumulations (mm per period) and those that are rates (mm h-1).
ACCUMULATIONS = ("AQC", "CPC", "AZC")
RATES = ("RZC",)


def _product_info(path: Path) -> dict:
    """Product, time (yyDDDHHMM) and accumulation minutes, from the file name or the GIF comment."""
    match = _NAME.match(path.name)
    if match:
        return match.groupdict()
    from PIL import Image

    with Image.open(path) as img:
        comment = img.info.get("comment", b"").decode("ascii", "replace")
    product = re.search(r"PRDT=([A-Z]{3})(\d{9})", comment)
    minutes = re.search(r"ACCUm=(\d+)", comment)
    if not product:
        raise SourceError(path, "neither the file name nor the GIF comment names a MeteoSwiss product")
    return {"product": product.group(1), "time": product.group(2),
            "minutes": minutes.group(1) if minutes else "5"}


def gif_time(path) -> pd.Timestamp:
    """Valid time (UTC, end of the accumulation) from a MeteoSwiss file name or GIF comment."""
    path = Path(path)
    with reading(path, "MeteoSwiss GIF"):
        return pd.Timestamp(pd.to_datetime(_product_info(path)["time"], format="%y%j%H%M"))


def open_mch(path, *, product: str | None = None, coarsen: int = 1) -> xr.Dataset:
    """Read one MeteoSwiss GIF composite as ``rainrate`` (mm h-1) on the CCS4 grid.

    Decoding is pysteps' ``import_mch_gif`` (AQC/CPC: digital numbers to mm
    per accumulation period; RZC/AZC: colour table), which is right for these
    files; we divide accumulations by their period (from the file name,
    5 min for ``_00005``), put them on EPSG:21781 (pysteps keeps a PROJ string
    that loses the oblique Mercator in CF) and add the time.

    Args:
        product: product code; default from the file name (AQC, CPC, RZC, AZC).
        coarsen: block-average factor.
    """
    from pysteps.io.importers import import_mch_gif

    path = Path(path)
    with reading(path, "MeteoSwiss GIF"):
        parts = _product_info(path)
    product = (product or parts["product"]).upper()
    if product not in ACCUMULATIONS + RATES:
        raise SourceError(path, f"unsupported MeteoSwiss product {product!r}; known: {ACCUMULATIONS + RATES}")
    minutes = int(parts["minutes"])
    time = gif_time(path)
    with reading(path, "MeteoSwiss GIF"):
        unit = "mm/h" if product in RATES else "mm"
        values, _, _ = import_mch_gif(str(path), product=product, unit=unit, accutime=minutes, dtype="float32")
    if values.shape != CCS4_SHAPE:
        raise SourceError(path, f"image of {values.shape[1]} x {values.shape[0]} cells is not the CCS4 grid "
                                f"({CCS4_SHAPE[1]} x {CCS4_SHAPE[0]}); it cannot be georeferenced")
    x = centres(CCS4_LEFT, CCS4_CELL, CCS4_SHAPE[1])
    y = centres(CCS4_TOP, -CCS4_CELL, CCS4_SHAPE[0])
    quantity = "rainrate" if product in RATES else "accumulation"
    accumulation = pd.Timedelta(minutes=minutes) if quantity == "accumulation" else None
    return radar_dataset(
        path, np.asarray(values, dtype="f4"), time=time, x=x, y=y, crs=LV03, quantity=quantity,
        source=f"{INSTITUTION} radar composite ({product}, GIF)", time_step="5min",
        accumulation=accumulation, coarsen=coarsen, attrs={"institution": INSTITUTION, "product": product},
    )
