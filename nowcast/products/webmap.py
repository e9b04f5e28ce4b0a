"""Small coloured images of forecasts for web maps (EPSG:3857, world files, a legend).

Each lead time (and flow, for traffic) becomes one RGBA PNG or lossless WebP
in Web Mercator, coloured with the shared palette
(:mod:`nowcast.products.palette`; dry and missing cells transparent), next to
an ESRI world file (``.pgw`` for PNG, ``.wld`` for WebP) that places it, and
its CRS twice, as GIS tools look for it: an ESRI ``.prj`` (QGIS, ArcGIS) and a
GDAL ``<image>.aux.xml`` (GDAL, rasterio), since a world file carries no CRS. A
legend image and a JSON manifest (``<stem>.json``: files, valid times, bounds
in EPSG:3857 and in longitude/latitude for overlays such as Leaflet's
``imageOverlay``) complete the set.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pyproj
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform

from nowcast.products.atomic import write_bytes_atomic, write_text_atomic
from nowcast.products.fields import default_stem, iso_time, product_variable, time_label, to_bands
from nowcast.products.palette import Palette, palette_for
from nowcast.schema import crs_of, validate

log = logging.getLogger(__name__)

WEB_MERCATOR = "EPSG:3857"
WORLD_FILE_SUFFIX = {"png": ".pgw", "webp": ".wld"}


def write_webmap_images(
    forecast: xr.Dataset,
    out_dir: str | os.PathLike,
    *,
    format: str = "png",
    stem: str | None = None,
    variable: str | None = None,
    max_size: int = 2048,
) -> list[Path]:
    """Write one coloured Web-Mercator image per lead time (× flow), atomically.

    An ensemble is shown as its mean; select a member first
    (``forecast.isel(realization=k)``) to show that one instead. Images are
    reprojected with nearest-neighbour resampling at about the source
    resolution, their longer edge capped at ``max_size`` pixels.

    Files, besides the images ``<stem>_lead005min[_inflow].<format>``: a world
    file per image, ``<stem>_legend.png`` and the manifest ``<stem>.json``.

    Args:
        forecast: a data-model dataset (forecast or observations).
        out_dir: folder for the files (created if needed).
        format: ``"png"`` or ``"webp"`` (lossless).
        stem: file-name stem; defaults to ``<variable>_<issue time>``.
        variable: the data variable, if the dataset has several.
        max_size: largest image edge in pixels.

    Returns:
        The image files, in band order (lead time, then flow).
    """
    if format not in WORLD_FILE_SUFFIX:
        raise ValueError(f"format must be one of {sorted(WORLD_FILE_SUFFIX)}, got {format!r}")
    validate(forecast)
    name = product_variable(forecast, variable)
    palette = palette_for(name)
    stem = stem or default_stem(forecast, name)
    out_dir = Path(out_dir)
    var = forecast[name]
    if "realization" in var.dims:
        var = var.mean("realization", keep_attrs=True)
    bands = to_bands(forecast, var)
    merc = to_web_mercator(bands.values, bands.x, bands.y, crs_of(forecast), max_size=max_size)
    transform = merc.rio.transform()
    paths, entries = [], []
    for values, coords in zip(merc.values, bands.coords):
        suffix = f"_{coords['flow']}" if "flow" in coords else ""
        path = out_dir / f"{stem}_{time_label(forecast, coords['time'])}{suffix}.{format}"
        _write_image(palette.rgba(values), path, format)
        write_text_atomic(path.with_suffix(WORLD_FILE_SUFFIX[format]), world_file(transform))
        write_crs_sidecars(path, WEB_MERCATOR)
        entry = {"file": path.name, "valid_time": iso_time(coords['time'])}
        if "flow" in coords:
            entry["flow"] = str(coords["flow"])
        entries.append(entry)
        paths.append(path)
    legend = write_legend(palette, out_dir / f"{stem}_legend.png")
    _write_manifest(out_dir / f"{stem}.json", merc, forecast, name, palette, legend, entries)
    log.info("wrote %d web-map images to %s", len(paths), out_dir)
    return paths


def to_web_mercator(values: np.ndarray, x: np.ndarray, y: np.ndarray, crs: pyproj.CRS, *,
                    max_size: int = 2048) -> xr.DataArray:
    """Reproject north-up rasters ``values`` (band, y, x) on cell centres ``x``/``y`` to EPSG:3857.

    Nearest-neighbour, NaN outside the source; the output keeps about the
    source resolution, its longer edge at most ``max_size`` pixels.
    """
    da = xr.DataArray(values, dims=("band", "y", "x"), coords={"y": y, "x": x})
    with warnings.catch_warnings():
        # rioxarray also writes CF attributes, which cannot hold the Swiss oblique Mercator's
        # rectified-grid angle; the reprojection uses the full CRS.
        warnings.filterwarnings("ignore", message="angle from rectified to skew grid")
        da = da.rio.write_crs(crs.to_wkt()).rio.write_nodata(np.nan)
    left, bottom, right, top = da.rio.bounds()
    _, width, height = calculate_default_transform(da.rio.crs, WEB_MERCATOR, da.rio.width, da.rio.height,
                                                   left=left, bottom=bottom, right=right, top=top)
    scale = min(1.0, max_size / max(width, height))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    return da.rio.reproject(WEB_MERCATOR, shape=shape, resampling=Resampling.nearest, nodata=np.nan)


def world_file(transform) -> str:
    """ESRI world-file text for an affine ``transform`` (it places pixel centres)."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    centre_x = c + a / 2 + b / 2
    centre_y = f + d / 2 + e / 2
    return "\n".join(f"{v:.10f}" for v in (a, d, b, e, centre_x, centre_y)) + "\n"


def write_crs_sidecars(image: Path, crs: str | pyproj.CRS) -> tuple[Path, Path]:
    """The CRS of a world-file image: ``<stem>.prj`` (ESRI WKT) and ``<image>.aux.xml`` (GDAL PAM)."""
    from xml.sax.saxutils import escape

    crs = pyproj.CRS(crs)
    prj = write_text_atomic(image.with_suffix(".prj"), crs.to_wkt(pyproj.enums.WktVersion.WKT1_ESRI))
    aux = write_text_atomic(image.with_name(image.name + ".aux.xml"),
                            f"<PAMDataset>\n  <SRS>{escape(crs.to_wkt())}</SRS>\n</PAMDataset>\n")
    return prj, aux


def write_legend(palette: Palette, path: str | os.PathLike, *, width_in: float = 5.0) -> Path:
    """Write a horizontal colour-bar legend of ``palette`` (PNG), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    cmap, norm = palette.cmap_norm()
    fig = Figure(figsize=(width_in, 0.9), dpi=100)
    FigureCanvasAgg(fig)
    cax = fig.add_axes((0.03, 0.55, 0.94, 0.3))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal",
                       extend="max", spacing="uniform", ticks=palette.levels)
    bar.ax.set_xticklabels([f"{level:g}" for level in palette.levels], fontsize=7)
    bar.set_label(palette.label, fontsize=8, labelpad=1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())


def _write_image(rgba: np.ndarray, path: Path, format: str) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"optimize": True} if format == "png" else {"lossless": True}
    Image.fromarray(rgba, mode="RGBA").save(buffer, format=format.upper(), **options)
    write_bytes_atomic(path, buffer.getvalue())


def _write_manifest(path: Path, merc: xr.DataArray, ds: xr.Dataset, name: str, palette: Palette,
                    legend: Path, entries: list[dict]) -> None:
    left, bottom, right, top = merc.rio.bounds()
    to_lonlat = pyproj.Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True)
    (west, east), (south, north) = to_lonlat.transform([left, right], [bottom, top])
    manifest = {
        "variable": name,
        "units": palette.units,
        "source": ds.attrs.get("source", ""),
        "crs": WEB_MERCATOR,
        "width": merc.rio.width,
        "height": merc.rio.height,
        "bounds": [left, bottom, right, top],
        "bounds_lonlat": [[south, west], [north, east]],
        "legend": legend.name,
        "levels": list(palette.levels),
        "colors": list(palette.colors),
        "images": entries,
    }
    if "forecast_reference_time" in ds.coords:
        manifest["forecast_reference_time"] = iso_time(ds["forecast_reference_time"].values)
    write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
