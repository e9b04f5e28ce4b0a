"""Georeferenced grids: a CRS plus cell-centre coordinates, and named real grids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyproj
import xarray as xr

from nowcast.schema import crs_of


@dataclass(frozen=True)
class Grid:
    """A regular north-up grid: ``x`` increasing, ``y`` decreasing (cell centres)."""

    crs: pyproj.CRS
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def from_bounds(cls, crs, left: float, bottom: float, right: float, top: float,
                    resolution: float | tuple[float, float]) -> "Grid":
        """Grid covering ``[left, right] × [bottom, top]`` (CRS units) at ``resolution``."""
        dx, dy = (resolution, resolution) if np.isscalar(resolution) else resolution
        nx = int(round((right - left) / dx))
        ny = int(round((top - bottom) / dy))
        x = left + dx * (np.arange(nx) + 0.5)
        y = top - dy * (np.arange(ny) + 0.5)
        return cls(pyproj.CRS.from_user_input(crs), x, y)

    @classmethod
    def centred_on(cls, crs, lon: float, lat: float, shape: tuple[int, int],
                   resolution: float) -> "Grid":
        """Grid of ``shape`` (ny, nx) cells of ``resolution`` CRS units centred on a point."""
        crs = pyproj.CRS.from_user_input(crs)
        cx, cy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
        ny, nx = shape
        half_w, half_h = nx * resolution / 2, ny * resolution / 2
        return cls.from_bounds(crs, cx - half_w, cy - half_h, cx + half_w, cy + half_h, resolution)

    @classmethod
    def of(cls, ds: xr.Dataset) -> "Grid":
        """The grid of a data-model dataset."""
        return cls(crs_of(ds), ds["x"].values, ds["y"].values)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.size, self.x.size)

    @property
    def resolution(self) -> tuple[float, float]:
        """Cell size (dx, dy) in CRS units, both positive."""
        return (float(abs(self.x[1] - self.x[0])), float(abs(self.y[1] - self.y[0])))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Outer edges (left, bottom, right, top) in CRS units."""
        dx, dy = self.resolution
        return (float(self.x.min() - dx / 2), float(self.y.min() - dy / 2),
                float(self.x.max() + dx / 2), float(self.y.max() + dy / 2))

    def same_as(self, other: "Grid", rtol: float = 1e-6) -> str | None:
        """None if the grids match, else a sentence saying how they differ."""
        if self.shape != other.shape:
            return f"grid shape {other.shape} differs from {self.shape}"
        if not self.crs.equals(other.crs, ignore_axis_order=True):
            return f"CRS '{other.crs.name}' differs from '{self.crs.name}'"
        tol = rtol * max(self.resolution) * 1e3
        if not (np.allclose(self.x, other.x, atol=tol) and np.allclose(self.y, other.y, atol=tol)):
            return f"grid bounds {other.bounds} differ from {self.bounds}"
        return None


# Real radar sites and city grids used by the embedded synthetic sources.
# FMI's composite projection (polar stereographic, lat_ts 60N, lon_0 25E,
# sphere) around the Vantaa radar (60.2706N, 24.8690E), 256 km x 256 km at 1 km.
FMI_COMPOSITE_CRS = ("+proj=stere +lat_0=90 +lat_ts=60 +lon_0=25 +a=6371288 "
                     "+x_0=380886.310 +y_0=3395677.920 +units=m +no_defs")
VANTAA = (24.8690, 60.2706)
# TaxiBJ covers central Beijing on a 32 x 32 grid; its papers give no exact
# box, so we document ours: 32 km x 32 km at 1 km in UTM 50N around Tiananmen.
BEIJING = (116.3975, 39.9087)


def radar_grid(size: int = 256, resolution: float = 1000.0) -> Grid:
    """``size`` × ``size`` grid of ``resolution`` m around FMI's Vantaa radar."""
    return Grid.centred_on(FMI_COMPOSITE_CRS, *VANTAA, (size, size), resolution)


def beijing_grid(size: int = 32, resolution: float = 1000.0) -> Grid:
    """TaxiBJ-like ``size`` × ``size`` grid over central Beijing (EPSG:32650)."""
    return Grid.centred_on("EPSG:32650", *BEIJING, (size, size), resolution)
