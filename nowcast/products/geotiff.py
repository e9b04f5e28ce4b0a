"""Cloud-Optimized GeoTIFFs of forecasts: one file per lead time, or one band per lead time.

Float32, DEFLATE with the floating-point predictor, nodata
:data:`~nowcast.products.netcdf.FILL_VALUE`, tiled, with internal overviews
(averaged) once a field is larger than one tile; CRS and transform come from
the dataset's ``crs`` and ``x``/``y`` cell centres, so a GeoTIFF covers
exactly the bounds of the NetCDF product. Traffic forecasts get one band per
flow (inflow, outflow), ensembles one band per member; each band carries a
description and its unit (GDAL's band unit type, e.g. ``mm h-1``, which QGIS
and ``rasterio``'s ``units`` show), the file its quantity, issue time and
source as tags.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import xarray as xr

from nowcast.grids import Grid
from nowcast.products.atomic import atomic_path
from nowcast.products.fields import (Bands, band_label, default_stem, iso_time, product_variable, time_label,
                                     to_bands)
from nowcast.products.netcdf import FILL_VALUE
from nowcast.schema import crs_of, iso_duration, validate

log = logging.getLogger(__name__)


def write_geotiffs(
    forecast: xr.Dataset,
    out_dir: str | os.PathLike,
    *,
    stem: str | None = None,
    cog: bool = True,
    variable: str | None = None,
    blocksize: int = 256,
) -> list[Path]:
    """Write one GeoTIFF per lead (valid) time, atomically.

    Bands are the non-spatial dims besides ``time``: one band for a
    deterministic rain-rate forecast, one per flow for traffic, one per member
    for ensembles (members × flows when both). Files are named
    ``<stem>_lead005min.tif`` for forecasts, ``<stem>_<valid time>.tif``
    otherwise.

    Args:
        forecast: a data-model dataset (forecast or observations).
        out_dir: folder for the files (created if needed).
        stem: file-name stem; defaults to ``<variable>_<issue time>``.
        cog: Cloud-Optimized GeoTIFF (with overviews) rather than a plain tiled GeoTIFF.
        variable: the data variable, if the dataset has several.
        blocksize: tile edge in pixels; overviews are made down to one tile.

    Returns:
        The files written, in time order.
    """
    validate(forecast)
    name = product_variable(forecast, variable)
    stem = stem or default_stem(forecast, name)
    out_dir = Path(out_dir)
    paths = []
    for i in range(forecast.sizes["time"]):
        one = forecast.isel(time=i)
        bands = to_bands(forecast, one[name])
        tags = {**_tags(forecast, name), **_time_tags(forecast, one["time"].values)}
        path = out_dir / f"{stem}_{time_label(forecast, one['time'].values)}.tif"
        default = band_label(forecast, "time", one["time"].values)
        _write(bands, bands.descriptions(default), path, forecast, tags, cog=cog, blocksize=blocksize)
        paths.append(path)
    log.info("wrote %d GeoTIFFs to %s", len(paths), out_dir)
    return paths


def write_geotiff_stack(
    forecast: xr.Dataset,
    path: str | os.PathLike,
    *,
    cog: bool = True,
    variable: str | None = None,
    blocksize: int = 256,
) -> Path:
    """Write a whole forecast as one multi-band GeoTIFF, one band per lead time, atomically.

    Traffic forecasts get one band per lead time × flow, ensembles per lead
    time × member (lead time varies slowest). Each band's description names its
    lead and valid time (e.g. ``+5 min (valid 2024-06-01T12:15Z)``), and its
    tags hold ``valid_time`` and, for forecasts, ``forecast_period``.

    Args: as :func:`write_geotiffs`; ``path`` is the target ``.tif``.
    """
    validate(forecast)
    name = product_variable(forecast, variable)
    bands = to_bands(forecast, forecast[name])
    tags = _tags(forecast, name)
    per_band = [_time_tags(forecast, c["time"]) for c in bands.coords]
    path = Path(path)
    _write(bands, bands.descriptions(name), path, forecast, {**tags, "band_tags": per_band},
           cog=cog, blocksize=blocksize)
    log.info("wrote %s (%d bands)", path, len(bands.labels))
    return path


def _tags(ds: xr.Dataset, name: str) -> dict:
    """File-level metadata: the quantity, its units and where the forecast comes from."""
    attrs = ds[name].attrs
    tags = {"variable": name, "units": attrs.get("units", ""), "source": ds.attrs.get("source", ""),
            "time_step": ds.attrs.get("time_step", "")}
    if attrs.get("standard_name"):
        tags["standard_name"] = attrs["standard_name"]
    if "forecast_reference_time" in ds.coords:
        tags["forecast_reference_time"] = iso_time(ds["forecast_reference_time"].values)
    return tags


def _time_tags(ds: xr.Dataset, time) -> dict[str, str]:
    """Metadata of one valid time: ``valid_time`` and, for forecasts, ``forecast_period`` (ISO 8601)."""
    tags = {"valid_time": iso_time(time)}
    if "forecast_reference_time" in ds.coords:
        tags["forecast_period"] = iso_duration(time - ds["forecast_reference_time"].values)
    return tags


def _write(bands: Bands, descriptions: list[str], path: Path, ds: xr.Dataset, tags: dict, *,
           cog: bool, blocksize: int) -> None:
    """Write with rasterio: each band gets its description and unit (GDAL band unit type), the file its tags."""
    import rasterio
    from rasterio.transform import from_bounds

    values = np.where(np.isnan(bands.values), FILL_VALUE, bands.values).astype("f4")
    count, height, width = values.shape
    if cog:
        # PREDICTOR=YES makes the COG driver pick the floating-point predictor (3).
        options = {"driver": "COG", "compress": "DEFLATE", "predictor": "YES", "blocksize": blocksize,
                   "overview_resampling": "AVERAGE"}
    else:
        options = {"driver": "GTiff", "compress": "DEFLATE", "predictor": 3, "tiled": True,
                   "blockxsize": blocksize, "blockysize": blocksize}
    band_tags = tags.pop("band_tags", [{}] * count)
    units = str(tags.get("units", ""))
    with atomic_path(path) as tmp, rasterio.open(
            tmp, "w", width=width, height=height, count=count, dtype="float32", nodata=float(FILL_VALUE),
            crs=rasterio.crs.CRS.from_wkt(crs_of(ds).to_wkt()),
            transform=from_bounds(*Grid.of(ds).bounds, width, height), **options) as dst:
        dst.write(values)
        dst.update_tags(**tags)
        for band, (description, extra) in enumerate(zip(descriptions, band_tags), start=1):
            dst.set_band_description(band, description)
            dst.set_band_unit(band, units)
            dst.update_tags(band, **extra)
