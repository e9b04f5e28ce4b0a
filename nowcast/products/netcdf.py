"""CF-NetCDF files of forecasts (deterministic or ensemble) and observations.

One file holds one data-model dataset: ``time`` (valid time),
``forecast_reference_time`` and ``forecast_period`` for forecasts, ``x``/``y``
projection coordinates, 2-D ``lat``/``lon``, and a ``crs`` grid-mapping
variable carrying both the CF attributes and ``crs_wkt``. Data are float32,
zlib-compressed, chunked so that one lead time (and one member) is a separate
set of chunks, with ``_FillValue`` marking missing values.

The file layout differs from the in-memory data model only where CF asks:
``time, y, x`` are the last dims (``realization`` and ``flow`` come first),
the ``flow`` labels are a string auxiliary coordinate ``flow_label`` (CF
coordinate variables are numeric), and a geographic grid has no 2-D
``lat``/``lon`` (``x``/``y`` are longitude/latitude). :func:`open_cf_netcdf`
undoes all three.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import dask
import numpy as np
import xarray as xr

import nowcast
from nowcast.netcdf_lock import NETCDF_LOCK
from nowcast.products.atomic import atomic_path
from nowcast.schema import CONVENTIONS, crs_of, data_variables, lonlat, validate

log = logging.getLogger(__name__)

# Missing-data marker of every product (NetCDF _FillValue, GeoTIFF nodata):
# outside any physical range and exactly representable in float32.
FILL_VALUE = np.float32(-9999.0)
# Spatial chunk edge: a float32 chunk is at most 1024 x 1024 x 4 B = 4 MiB,
# the size HDF5 handles well, while small grids keep one chunk per field.
CHUNK_EDGE = 1024
# Float32 bytes of the leads written at once (the size of the writer's temporary copies).
WRITE_BLOCK_BYTES = 32 * 2**20
#: netCDF-C's chunk cache per variable while writing (its default: 64 MiB each, so 190 MiB for rain, lat and
#: lon on the OPERA grid). Every chunk is written whole by one block, so four chunks of CHUNK_EDGE^2 suffice.
WRITE_CACHE_BYTES = 4 * 4 * CHUNK_EDGE**2
TIME_UNITS = "seconds since 1970-01-01 00:00:00"
FLOW_LABEL = "flow_label"
# CF's oblique_mercator has no attribute for the angle from the rectified to the skew grid (EPSG 8814),
# which the Swiss grids (Hotine variant B, azimuth 90°) set to 90°; without it the CF attributes alone
# describe a different projection.
OBLIQUE_MERCATOR_NOTE = (
    "Grid mapping: oblique Mercator (Hotine). CF's oblique_mercator attributes cannot express the angle "
    "from the rectified to the skew grid, so they alone do not define this projection: use the crs "
    "variable's crs_wkt (GDAL, QGIS, pyproj and xarray/rioxarray read it), not the CF attributes.")


def write_cf_netcdf(
    forecast: xr.Dataset,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    institution: str = "nowcast",
    references: str | None = None,
    checkpoint_hash: str | None = None,
    comment: str | None = None,
    complevel: int = 4,
) -> Path:
    """Write a data-model dataset as a CF-1.8 NetCDF-4 file, atomically.

    Args:
        forecast: a forecast from :func:`nowcast.schema.make_forecast` (dims
            ``(time, [realization], [flow], y, x)``) or an observation
            dataset; validated with :func:`nowcast.schema.validate` first.
        path: target file (``.nc``); its folder is created if needed.
        title: global ``title``; defaults to one naming the variable, the
            source and the issue time.
        institution: global ``institution``.
        references: global ``references``; defaults to the nowcast version.
        checkpoint_hash: hash of the model weights, recorded in ``source``
            (falls back to the dataset's ``checkpoint_hash`` attribute).
        comment: global ``comment``.
        complevel: zlib level (1-9) of the data variables.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        nowcast.schema.SchemaError: if ``forecast`` does not follow the data model.
    """
    validate(forecast)
    # A few leads (one member) at a time, laid out, encoded and written in this thread: the float32 and
    # fill-value copies stay small, and lazily read NetCDF inputs take the re-entrant lock held below.
    forecast = forecast.assign({name: _in_blocks(forecast[name], _write_chunks(forecast[name]))
                                for name in data_variables(forecast) if 4 * forecast[name].size > WRITE_BLOCK_BYTES})
    ds = _cf_dataset(forecast, title=title, institution=institution, references=references,
                     checkpoint_hash=checkpoint_hash, comment=comment)
    encoding = _encoding(ds, complevel)
    path = Path(path)
    with atomic_path(path) as tmp, NETCDF_LOCK, _chunk_cache(WRITE_CACHE_BYTES), \
            dask.config.set(scheduler="synchronous"):
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=encoding)
    log.info("wrote %s (%s, %d time steps)", path, ", ".join(data_variables(ds)), ds.sizes["time"])
    return path


@contextlib.contextmanager
def _chunk_cache(size: int) -> Iterator[None]:
    """netCDF-C's default chunk cache set to ``size`` bytes for the files opened inside (hold NETCDF_LOCK)."""
    import netCDF4

    before = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(size, before[1], before[2])
    try:
        yield
    finally:
        netCDF4.set_chunk_cache(*before)


def open_cf_netcdf(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Open a file written by :func:`write_cf_netcdf` as a data-model dataset.

    Args:
        path: the NetCDF file.
        chunks: passed to :func:`xarray.open_dataset` (e.g. ``{}`` for dask).

    Returns:
        The dataset in data-model layout, validated; missing values are NaN.
    """
    # decode_coords=True (not "all") keeps grid_mapping an attribute, as in the data model.
    with NETCDF_LOCK:  # later lazy reads take the same lock through xarray
        ds = xr.open_dataset(path, decode_coords=True, decode_timedelta=True, chunks=chunks,
                             lock=NETCDF_LOCK).set_coords("crs")
    if FLOW_LABEL in ds.coords:
        label = ds[FLOW_LABEL]
        ds = ds.drop_vars(FLOW_LABEL).assign_coords(flow=("flow", label.values.astype(str), label.attrs))
    if "lat" not in ds.coords:
        lon, lat = lonlat(crs_of(ds), ds["x"].values, ds["y"].values)
        ds = ds.assign_coords(
            lat=(("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north", "long_name": "latitude"}),
            lon=(("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east", "long_name": "longitude"}))
    for name in data_variables(ds):
        order = ("time", "realization", "flow")
        ds[name] = ds[name].transpose(*(d for d in order if d in ds[name].dims), "y", "x")
    return validate(ds)


def _cf_dataset(ds: xr.Dataset, *, title, institution, references, checkpoint_hash, comment) -> xr.Dataset:
    """A copy of ``ds`` laid out and annotated for CF (see :func:`write_cf_netcdf`)."""
    names = data_variables(ds)
    ds = ds[names].copy()
    if crs_of(ds).is_geographic:
        # x/y already are longitude/latitude; CF 5.6 allows one variable per
        # standard name, so the 2-D copies stay out (open_cf_netcdf restores them).
        ds = ds.drop_vars(["lat", "lon"])
    if "flow" in ds.coords:
        ds = ds.rename_vars(flow=FLOW_LABEL).drop_indexes(FLOW_LABEL, errors="ignore")
    for name in names:
        # CF 2.4 recommends (T, Z, Y, X) last, other dims to their left.
        ds[name] = ds[name].astype("f4").transpose(*_cf_dims(ds[name].dims))
    # A grid-mapping variable is referenced by grid_mapping, not listed in
    # the coordinates attribute as xarray does with coordinates.
    ds = ds.reset_coords("crs")
    ds["crs"].attrs.update(_grid_mapping_extras(ds["crs"].attrs))
    if "realization" in ds.coords:
        ds["realization"].attrs.setdefault("units", "1")
    if "forecast_period" in ds.coords:
        # Whole seconds written as such: xarray's timedelta encoding would add a non-CF ``dtype`` attribute.
        period = ds["forecast_period"]
        seconds = (period.values / np.timedelta64(1, "s")).astype("i4")
        ds = ds.assign_coords(forecast_period=("time", seconds, {**period.attrs, "units": "seconds"}))
    for name in ("time", "forecast_reference_time"):
        if name in ds.coords:
            # datetime64 is POSIX time: no leap seconds (CF 1.11 4.4.1).
            ds[name].attrs["units_metadata"] = "leap_seconds: none"
    is_forecast = "forecast_reference_time" in ds.coords
    hash_ = checkpoint_hash or ds.attrs.get("checkpoint_hash")
    source = str(ds.attrs.get("source", "unknown"))
    if hash_ and str(hash_) not in source:
        source += f" (checkpoint {hash_})"
        ds.attrs["checkpoint_hash"] = str(hash_)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = f"{now} written by nowcast {nowcast.__version__} (nowcast.products.write_cf_netcdf)"
    if ds.attrs.get("history"):
        history = f"{ds.attrs['history']}\n{history}"
    ds.attrs.update({
        "Conventions": CONVENTIONS,
        "title": title or _default_title(ds, names, is_forecast),
        "institution": institution,
        "source": source,
        "history": history,
        "references": references or f"nowcast {nowcast.__version__}",
        "date_created": now,
    })
    notes = [comment] if comment else []
    if ds["crs"].attrs.get("grid_mapping_name") == "oblique_mercator":
        notes.append(OBLIQUE_MERCATOR_NOTE)
    if notes:
        ds.attrs["comment"] = "\n".join(notes)
    return ds


class _Sliced:
    """An in-memory array that dask can only slice: ``dask.array.from_array`` copies whatever has a
    ``copy`` method first (a whole forecast, 200 MB on the OPERA grid, or all of persistence's
    broadcast view), so a block-wise write would cost a full copy."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return self.array[key]


def _in_blocks(var: xr.DataArray, chunks: dict[str, int]) -> xr.DataArray:
    """``var`` as dask blocks of ``chunks`` without a copy of in-memory data."""
    if not isinstance(var.variable._data, np.ndarray):
        return var.chunk(chunks)
    import dask.array as da

    blocks = tuple(chunks.get(dim, size) for dim, size in zip(var.dims, var.shape))
    return var.copy(data=da.from_array(_Sliced(var.values), chunks=blocks, name=False))  # name: no hashing of it


def _write_chunks(var: xr.DataArray) -> dict[str, int]:
    """Leads per written block: as many as fit in :data:`WRITE_BLOCK_BYTES` (at least one), one member each."""
    members = var.sizes.get("realization", 1)
    lead_bytes = 4 * var.size // max(var.sizes["time"] * members, 1)
    return {"time": max(1, WRITE_BLOCK_BYTES // max(lead_bytes, 1)), **({"realization": 1} if members > 1 else {})}


def _cf_dims(dims: tuple[str, ...]) -> tuple[str, ...]:
    """``dims`` with ``time``, ``y``, ``x`` last (CF order), the others first in their order."""
    spatio_temporal = ("time", "y", "x")
    return tuple(d for d in dims if d not in spatio_temporal) + tuple(d for d in spatio_temporal if d in dims)


def _grid_mapping_extras(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes the ``crs`` variable needs in a file besides the data model's ones."""
    extras: dict[str, Any] = {"long_name": "coordinate reference system"}
    if attrs.get("grid_mapping_name") == "oblique_mercator" and "azimuth_of_central_line" in attrs:
        # compliance-checker (6.1, cf/appendix_f.py) requires "azimuth" for
        # oblique_mercator where CF names it "azimuth_of_central_line"; the
        # duplicate is harmless to other readers.
        extras["azimuth"] = attrs["azimuth_of_central_line"]
    return extras


def _default_title(ds: xr.Dataset, names: list[str], is_forecast: bool) -> str:
    quantity = ", ".join(ds[name].attrs.get("long_name", name) for name in names)
    if not is_forecast:
        return f"{quantity} observations ({ds.attrs.get('source', 'unknown source')})"
    issued = np.datetime_as_string(ds["forecast_reference_time"].values, unit="m")
    kind = "ensemble forecast" if "realization" in ds.dims else "forecast"
    return f"{quantity} {kind} issued {issued}Z by {ds.attrs.get('source', 'unknown model')}"


def _encoding(ds: xr.Dataset, complevel: int) -> dict[str, dict[str, Any]]:
    """NetCDF encodings: compressed float32 data chunked per lead time, no fill on coordinates."""
    encoding: dict[str, dict[str, Any]] = {}
    for name in ds.coords:
        # CF 2.5.1: coordinate variables must not carry _FillValue, which
        # xarray adds to float coordinates by default.
        encoding[name] = {"_FillValue": None}
    for name in ("lat", "lon"):
        if name in ds.coords:
            # 2-D auxiliary coordinates were 85-90 % of a file as uncompressed float64; float32 keeps
            # them to about 1 m, far below any radar cell, and they compress like the data.
            encoding[name].update(dtype="f4", zlib=True, complevel=complevel, shuffle=True,
                                  chunksizes=tuple(min(CHUNK_EDGE, n) for n in ds[name].shape))
    for name in ("time", "forecast_reference_time"):
        if name in ds.coords:
            # double, not int64: CF before 1.9 has no 64-bit integers.
            encoding[name].update(units=TIME_UNITS, calendar="proleptic_gregorian", dtype="f8")
    for name in data_variables(ds):
        var = ds[name]
        chunks = tuple(min(CHUNK_EDGE, n) if dim in ("y", "x") else 1 if dim in ("time", "realization") else n
                       for dim, n in zip(var.dims, var.shape))
        encoding[name] = {"dtype": "f4", "zlib": True, "complevel": complevel, "shuffle": True,
                          "chunksizes": chunks, "_FillValue": FILL_VALUE}
    return encoding
