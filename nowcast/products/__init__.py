"""Georeferenced forecast products: CF-NetCDF, Cloud-Optimized GeoTIFF, web-map images.

* :func:`write_cf_netcdf` / :func:`open_cf_netcdf`: one CF-1.8 NetCDF-4 file
  per forecast (ensembles and traffic flows included), CRS as CF grid mapping
  plus WKT;
* :func:`write_geotiffs`: one COG per lead time; :func:`write_geotiff_stack`:
  one band per lead time;
* :func:`write_webmap_images`: coloured EPSG:3857 PNG/WebP images with world
  files, a legend and a JSON manifest;
* :mod:`nowcast.products.palette`: the shared colour scales;
  :mod:`nowcast.products.atomic`: temp-file-then-rename writes.

All writers validate their input against :mod:`nowcast.schema` and write
atomically.
"""

from __future__ import annotations

import importlib

# Writers load on first use, so importing the light modules (palette, atomic)
# does not pull in rioxarray and GDAL (about a second).
_EXPORTS = {
    "FILL_VALUE": "nowcast.products.netcdf",
    "open_cf_netcdf": "nowcast.products.netcdf",
    "write_cf_netcdf": "nowcast.products.netcdf",
    "write_geotiff_stack": "nowcast.products.geotiff",
    "write_geotiffs": "nowcast.products.geotiff",
    "write_legend": "nowcast.products.webmap",
    "write_webmap_images": "nowcast.products.webmap",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nowcast.products' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
