"""Reproject data-model datasets and archives onto another grid (CRS, resolution, extent).

For training across sources (a common grid) and comparing with NWP grids.
The warping is GDAL's, through :func:`rasterio.warp.reproject`, applied per
block of frames with :func:`xarray.apply_ufunc` so that a dask-backed
archive is regridded lazily, a chunk of frames at a time. (rioxarray's
``reproject`` wraps the same call but loads the whole array and does not
carry our CF coordinates, so we call rasterio directly.) No-data (NaN)
stays no-data; "average" is the right method when coarsening (e.g. FMI's
250 m GeoTIFF to 1 km), "bilinear" when the resolutions are alike,
"nearest" for counts that must stay integers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyproj
import xarray as xr

from nowcast import archive
from nowcast.grids import Grid
from nowcast.schema import data_variables, make_dataset, validate

log = logging.getLogger(__name__)

METHODS = ("bilinear", "nearest", "average", "cubic")
EDGE_SAMPLES = 64


def _transform(grid: Grid):
    from affine import Affine

    dx, dy = grid.resolution
    left, _, _, top = grid.bounds
    return Affine(dx, 0.0, left, 0.0, -dy, top)


#: Largest target grid accepted (2.2e8 cells: 0.8 GiB a float32 frame, a 1 km grid of a whole continent).
MAX_CELLS = 220_000_000


def target_grid(source: Grid, crs, resolution: float | tuple[float, float],
                bounds: tuple[float, float, float, float] | None = None) -> Grid:
    """A north-up grid in ``crs`` at ``resolution``; ``bounds`` (left, bottom, right, top, in
    ``crs`` units) default to the footprint of ``source`` (its edges, densely sampled)."""
    crs = pyproj.CRS.from_user_input(crs)
    if bounds is None:
        left, bottom, right, top = source.bounds
        t = np.linspace(0.0, 1.0, EDGE_SAMPLES)
        xs = np.concatenate([left + (right - left) * t, np.full_like(t, right), right - (right - left) * t,
                             np.full_like(t, left)])
        ys = np.concatenate([np.full_like(t, bottom), bottom + (top - bottom) * t, np.full_like(t, top),
                             top - (top - bottom) * t])
        tx, ty = pyproj.Transformer.from_crs(source.crs, crs, always_xy=True).transform(xs, ys)
        bounds = (float(np.min(tx)), float(np.min(ty)), float(np.max(tx)), float(np.max(ty)))
    rx, ry = (resolution, resolution) if np.ndim(resolution) == 0 else resolution
    if not (np.isfinite(rx) and np.isfinite(ry) and rx > 0 and ry > 0):
        raise ValueError(f"resolution must be positive cell sizes in {crs.axis_info[0].unit_name}s, got {resolution}")
    nx, ny = (bounds[2] - bounds[0]) / rx, (bounds[3] - bounds[1]) / ry
    if nx * ny > MAX_CELLS:
        raise ValueError(f"resolution {resolution} would make a {nx:,.0f} x {ny:,.0f} grid "
                         f"({4 * nx * ny / 2**30:,.1f} GiB a frame, over the {MAX_CELLS:,} cell limit); "
                         "choose a coarser resolution or smaller bounds")
    return Grid.from_bounds(crs, *bounds, resolution)


def regrid(ds: xr.Dataset, grid: Grid, method: str = "bilinear") -> xr.Dataset:
    """Reproject every frame of a data-model dataset onto ``grid``.

    Args:
        ds: data-model dataset (numpy- or dask-backed; dask stays lazy).
        grid: the target :class:`~nowcast.grids.Grid` (north-up).
        method: ``"bilinear"``, ``"nearest"``, ``"average"`` or ``"cubic"``.

    Returns:
        The data model on ``grid``: same variables, times and attributes, plus
        ``regridded_from``; cells outside the source grid are NaN.
    """
    import rasterio.crs
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    validate(ds)
    source = Grid.of(ds)
    flip = source.y[0] < source.y[-1]
    if flip:
        ds = ds.isel(y=slice(None, None, -1))
        source = Grid.of(ds)
    src = dict(src_transform=_transform(source), src_crs=rasterio.crs.CRS.from_wkt(source.crs.to_wkt()))
    dst = dict(dst_transform=_transform(grid), dst_crs=rasterio.crs.CRS.from_wkt(grid.crs.to_wkt()))
    ny, nx = grid.shape

    def warp(block: np.ndarray) -> np.ndarray:
        lead = block.shape[:-2]
        stack = np.ascontiguousarray(block.reshape((-1,) + block.shape[-2:]), dtype="f4")
        out = np.full((stack.shape[0], ny, nx), np.nan, dtype="f4")
        reproject(stack, out, **src, **dst, src_nodata=np.nan, dst_nodata=np.nan,
                  resampling=getattr(Resampling, method))
        return out.reshape(lead + (ny, nx))

    variables = {}
    for name in data_variables(ds):
        var = ds[name]
        if var.chunks is not None:
            var = var.chunk({"y": -1, "x": -1})
        warped = xr.apply_ufunc(
            warp, var, input_core_dims=[["y", "x"]], output_core_dims=[["y_new", "x_new"]],
            exclude_dims={"y", "x"}, dask="parallelized", output_dtypes=["f4"],
            dask_gufunc_kwargs={"output_sizes": {"y_new": ny, "x_new": nx}},
        ).rename({"y_new": "y", "x_new": "x"})
        variables[name] = warped
    first = data_variables(ds)[0]
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("Conventions", "source", "time_step")}
    attrs["regridded_from"] = (f"{source.crs.name} grid {source.shape[1]} x {source.shape[0]} at "
                               f"{source.resolution[0]:g} x {source.resolution[1]:g}, {method} (GDAL warp)")
    out = make_dataset(variables[first].data, times=ds["time"].values, x=grid.x, y=grid.y, crs=grid.crs,
                       variable=first, source=ds.attrs.get("source", ""), time_step=ds.attrs["time_step"],
                       attrs=attrs)
    for name in variables:
        out[name] = (out[first].dims, variables[name].data, dict(ds[name].attrs))
    return out


def regrid_archive(source: str | os.PathLike, target: str | os.PathLike, grid: Grid, method: str = "bilinear",
                   *, batch_frames: int | None = None) -> int:
    """Regrid the archive ``source`` into the archive ``target`` batch by batch; return frames added.

    Idempotent like :func:`nowcast.archive.write`: times already in ``target``
    are skipped, so an interrupted run can be repeated.
    """
    ds = archive.open_archive(source)
    done = archive.times(target) if archive.exists(target) else None
    if done is not None:
        ds = ds.sel(time=~ds.indexes["time"].isin(done))
    layers = int(np.prod([n for d, n in ds.sizes.items() if d not in ("time", "y", "x")]))
    frame = 4 * layers * max(ds.sizes["y"] * ds.sizes["x"], grid.shape[0] * grid.shape[1])
    size = batch_frames or max(1, (64 * 2**20) // frame)
    added = 0
    for start in range(0, ds.sizes["time"], size):
        batch = regrid(ds.isel(time=slice(start, start + size)), grid, method).compute()
        added += archive.write(batch, Path(target))
    log.info("regridded %d frames of %s into %s", added, source, target)
    return added
