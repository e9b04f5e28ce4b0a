"""Georeferenced forecast products: CF-NetCDF, Cloud-Optimized GeoTIFF, web-map images.

``palette`` holds the shared colour scales (rain rate, crowd flow).
"""
