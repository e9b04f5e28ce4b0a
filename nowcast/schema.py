"""The nowcast data model: one gridded sequence is one ``xarray.Dataset``.

Every reader returns it, the archive stores it, the forecast layer builds it
and products and scores consume it. Layout:

* dims ``(time, y, x)``; traffic adds ``flow`` (``inflow``, ``outflow``)
  before ``y``; ensembles add ``realization`` after ``time``;
* ``x``/``y``: 1-D projection coordinates in metres (degrees for a geographic
  CRS) with CF standard names, ``y`` decreasing (north-up) by convention;
* ``lat``/``lon``: 2-D auxiliary coordinates in degrees (WGS 84);
* ``crs``: a scalar grid-mapping variable from :meth:`pyproj.CRS.to_cf`
  (``crs_wkt`` included), referenced by every data variable's
  ``grid_mapping`` attribute;
* ``time``: UTC ``datetime64[ns]``, strictly increasing; forecasts carry the
  scalar ``forecast_reference_time`` and ``forecast_period`` (timedelta) on
  ``time``;
* attrs ``source`` and ``time_step`` (ISO-8601 duration, e.g. ``PT5M``); a
  variable that is an accumulation carries ``accumulation_period``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyproj
import xarray as xr

CONVENTIONS = "CF-1.8"
FLOW_LABELS = ("inflow", "outflow")


@dataclass(frozen=True)
class Quantity:
    """CF description of one physical quantity stored in a data variable."""

    name: str
    units: str
    standard_name: str | None
    long_name: str
    valid_min: float | None = None


QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("rainrate", "mm h-1", "rainfall_rate", "radar rain rate", 0.0),
        Quantity("reflectivity", "dBZ", "equivalent_reflectivity_factor",
                 "radar reflectivity factor"),
        Quantity("accumulation", "mm", "thickness_of_rainfall_amount",
                 "precipitation accumulation", 0.0),
        Quantity("crowd_flow", "1", None,
                 "crowd flow (count of trips per cell and time slot)", 0.0),
    )
}


class SchemaError(ValueError):
    """A dataset does not follow the nowcast data model."""


def cf_grid_mapping(crs: pyproj.CRS | str | int) -> dict[str, Any]:
    """CF grid-mapping attributes (with ``crs_wkt``) for any pyproj CRS.

    Fills the attributes pyproj leaves out that CF requires (e.g.
    ``latitude_of_projection_origin`` for polar stereographic variant B).
    """
    crs = pyproj.CRS.from_user_input(crs)
    with warnings.catch_warnings():
        # Oblique Mercator loses the rectified-grid angle in the CF attributes;
        # crs_wkt below keeps the full definition, which readers prefer.
        warnings.filterwarnings("ignore", message="angle from rectified to skew grid")
        cf = crs.to_cf()
    if cf.get("grid_mapping_name") == "polar_stereographic":
        lat_ts = cf.get("standard_parallel", 90.0)
        cf.setdefault("latitude_of_projection_origin", 90.0 if lat_ts >= 0 else -90.0)
    cf.setdefault("crs_wkt", crs.to_wkt())
    cf.setdefault("spatial_ref", cf["crs_wkt"])
    return cf


def crs_variable(crs: pyproj.CRS | str | int) -> xr.DataArray:
    """The scalar ``crs`` grid-mapping variable for ``crs``."""
    return xr.DataArray(np.int32(0), attrs=cf_grid_mapping(crs))


def crs_of(ds: xr.Dataset | xr.DataArray) -> pyproj.CRS:
    """The CRS of a data-model dataset, recovered from its ``crs`` variable."""
    if "crs" not in ds.coords and not (isinstance(ds, xr.Dataset) and "crs" in ds):
        raise SchemaError("dataset has no 'crs' grid-mapping variable")
    attrs = ds["crs"].attrs
    if "crs_wkt" in attrs:
        return pyproj.CRS.from_wkt(attrs["crs_wkt"])
    return pyproj.CRS.from_cf(attrs)


def xy_attrs(crs: pyproj.CRS) -> tuple[dict, dict]:
    """CF attributes of the ``x`` and ``y`` coordinates for ``crs``."""
    if crs.is_geographic:
        return (
            {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
            {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"},
        )
    return (
        {"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection",
         "units": "m", "axis": "X"},
        {"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection",
         "units": "m", "axis": "Y"},
    )


#: lat/lon are computed this many cells at a time (memory stays bounded on 36 M-cell grids).
LATLON_BLOCK_CELLS = 2**20


def lonlat(crs: pyproj.CRS, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    """2-D WGS 84 longitude and latitude (degrees) of grid-cell centres, shape (y, x).

    Computed in row blocks, so only one block's mesh is held at a time. On a
    lat/lon grid whose datum needs no shift to WGS 84 they are lazy (dask)
    broadcasts of ``x`` and ``y``, which cost no memory at all.
    """
    import dask.array

    x, y = np.asarray(x, dtype="f8"), np.asarray(y, dtype="f8")
    shape = (y.size, x.size)
    rows = max(1, LATLON_BLOCK_CELLS // max(x.size, 1))
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    if crs.is_geographic and x.size and y.size and _keeps_degrees(to_ll, x, y):
        lon = dask.array.broadcast_to(dask.array.from_array(x[None, :]), shape, chunks=(rows, x.size))
        lat = dask.array.broadcast_to(dask.array.from_array(y[:, None], chunks=(rows, 1)), shape,
                                      chunks=(rows, x.size))
        return lon, lat
    lon, lat = np.empty(shape), np.empty(shape)
    for start in range(0, y.size, rows):
        block = slice(start, start + rows)
        xx, yy = np.meshgrid(x, y[block])
        lon[block], lat[block] = to_ll.transform(xx, yy)
    return lon, lat


def _keeps_degrees(to_ll: pyproj.Transformer, x: np.ndarray, y: np.ndarray) -> bool:
    """True if the transform to WGS 84 leaves the grid's corner coordinates unchanged."""
    xx, yy = np.meshgrid(x[[0, -1]], y[[0, -1]])
    lon, lat = to_ll.transform(xx, yy)
    return bool(np.allclose(lon, xx, atol=1e-9) and np.allclose(lat, yy, atol=1e-9))


def time_step(ds: xr.Dataset) -> pd.Timedelta:
    """The nominal time step of a dataset (its ``time_step`` attribute)."""
    try:
        return pd.Timedelta(ds.attrs["time_step"])
    except KeyError:
        raise SchemaError("dataset has no 'time_step' attribute") from None


def iso_duration(step: pd.Timedelta | str | np.timedelta64) -> str:
    """ISO-8601 duration string for a positive time step, e.g. ``PT5M``."""
    seconds = int(pd.Timedelta(step).total_seconds())
    if seconds <= 0:
        raise SchemaError(f"time step must be positive, got {step}")
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    return "P" + (f"{days}D" if days else "") + ("T" + clock if clock else "")


def make_dataset(
    data: Any,
    *,
    times: Sequence | np.ndarray | pd.DatetimeIndex,
    x: np.ndarray,
    y: np.ndarray,
    crs: pyproj.CRS | str | int,
    variable: str = "rainrate",
    source: str,
    time_step: str | pd.Timedelta,
    accumulation_period: str | pd.Timedelta | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap an array in the data model.

    Args:
        data: array (numpy or dask) shaped ``(time, y, x)``, or
            ``(time, flow, y, x)`` for ``crowd_flow``.
        times: UTC valid times (naive or tz-aware; stored naive UTC).
        x, y: 1-D cell-centre coordinates in CRS units (metres, or degrees
            for a geographic CRS).
        crs: anything :func:`pyproj.CRS.from_user_input` accepts.
        variable: a key of :data:`QUANTITIES`.
        source: where the data come from (e.g. ``"FMI composite"``).
        time_step: nominal step (``"5min"``, ``"PT5M"``, a Timedelta).
        accumulation_period: for accumulations, the period each value covers.
    """
    crs = pyproj.CRS.from_user_input(crs)
    quantity = QUANTITIES[variable]
    times = pd.DatetimeIndex(times)
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    dims = ("time", "flow", "y", "x") if variable == "crowd_flow" else ("time", "y", "x")
    var_attrs = {"units": quantity.units, "long_name": quantity.long_name, "grid_mapping": "crs"}
    if quantity.standard_name:
        var_attrs["standard_name"] = quantity.standard_name
    if accumulation_period is not None:
        var_attrs["accumulation_period"] = iso_duration(accumulation_period)
    x_attrs, y_attrs = xy_attrs(crs)
    lon, lat = lonlat(crs, x, y)
    coords: dict[str, Any] = {
        "time": ("time", times.values.astype("datetime64[ns]"),
                 {"standard_name": "time", "long_name": "time", "axis": "T"}),
        "y": ("y", np.asarray(y, dtype="f8"), y_attrs),
        "x": ("x", np.asarray(x, dtype="f8"), x_attrs),
        "lat": (("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north", "long_name": "latitude"}),
        "lon": (("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east", "long_name": "longitude"}),
        "crs": crs_variable(crs),
    }
    if variable == "crowd_flow":
        coords["flow"] = ("flow", np.array(FLOW_LABELS), {"long_name": "flow direction"})
    ds = xr.Dataset({variable: (dims, data, var_attrs)}, coords=coords)
    ds.attrs.update({
        "Conventions": CONVENTIONS,
        "source": source,
        "time_step": iso_duration(time_step),
    })
    ds.attrs.update(attrs or {})
    return ds


def data_variables(ds: xr.Dataset) -> list[str]:
    """Names of the data variables that carry a physical quantity."""
    return [name for name in ds.data_vars if name in QUANTITIES]


def validate(ds: xr.Dataset, *, forecast: bool | None = None) -> xr.Dataset:
    """Check that ``ds`` follows the data model; return it unchanged.

    Args:
        ds: the dataset to check.
        forecast: require (True) or forbid (False) forecast coordinates;
            None infers from the presence of ``forecast_reference_time``.

    Raises:
        SchemaError: naming the first problem found.
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    names = data_variables(ds)
    if not names:
        raise SchemaError(
            f"dataset has no data variable named one of {sorted(QUANTITIES)}; found {list(ds.data_vars)}")
    if "crs" not in ds.variables:
        raise SchemaError("dataset has no 'crs' grid-mapping variable")
    try:
        crs = crs_of(ds)
    except pyproj.exceptions.CRSError as err:
        raise SchemaError(f"'crs' variable does not describe a CRS: {err}") from err
    if "crs_wkt" not in ds["crs"].attrs:
        raise SchemaError("'crs' variable has no 'crs_wkt' attribute")
    for axis, attrs in zip(("x", "y"), xy_attrs(crs)):
        if axis not in ds.coords or ds[axis].ndim != 1:
            raise SchemaError(f"dataset has no 1-D '{axis}' coordinate")
        for key in ("standard_name", "units"):
            if ds[axis].attrs.get(key) != attrs[key]:
                raise SchemaError(
                    f"coordinate '{axis}' has {key}={ds[axis].attrs.get(key)!r}, expected {attrs[key]!r}")
        step = np.diff(ds[axis].values)
        if step.size and not (np.all(step > 0) or np.all(step < 0)):
            raise SchemaError(f"coordinate '{axis}' is not strictly monotonic")
    for name in ("lat", "lon"):
        if name not in ds.coords or ds[name].dims != ("y", "x"):
            raise SchemaError(f"dataset has no 2-D '{name}' coordinate on (y, x)")
    if "time" not in ds.coords:
        raise SchemaError("dataset has no 'time' coordinate")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise SchemaError(f"'time' is {ds['time'].dtype}, expected datetime64 (UTC)")
    if ds.sizes["time"] > 1 and not np.all(np.diff(ds["time"].values) > np.timedelta64(0, "ns")):
        raise SchemaError("time is not strictly increasing")
    time_step(ds)
    for name in names:
        var = ds[name]
        quantity = QUANTITIES[name]
        if var.attrs.get("grid_mapping") != "crs":
            raise SchemaError(f"variable '{name}' has no grid_mapping (expected grid_mapping='crs')")
        if var.attrs.get("units") != quantity.units:
            raise SchemaError(f"variable '{name}' has units {var.attrs.get('units')!r}, expected {quantity.units!r}")
        if var.dims[0] != "time" or var.dims[-2:] != ("y", "x"):
            raise SchemaError(f"variable '{name}' has dims {var.dims}, expected (time, ..., y, x)")
        extra = set(var.dims[1:-2]) - {"flow", "realization"}
        if extra:
            raise SchemaError(f"variable '{name}' has unexpected dims {sorted(extra)}")
        if name == "crowd_flow" and "flow" not in var.dims:
            raise SchemaError("variable 'crowd_flow' has no 'flow' dim (inflow, outflow)")
    is_forecast = "forecast_reference_time" in ds.coords
    if forecast is True and not is_forecast:
        raise SchemaError("forecast has no 'forecast_reference_time' coordinate")
    if forecast is False and is_forecast:
        raise SchemaError("observations must not carry 'forecast_reference_time'")
    if is_forecast:
        if "forecast_period" not in ds.coords or ds["forecast_period"].dims != ("time",):
            raise SchemaError("forecast has no 'forecast_period' coordinate on 'time'")
        lead = ds["time"].values - ds["forecast_reference_time"].values
        if not np.array_equal(lead, ds["forecast_period"].values.astype(lead.dtype)):
            raise SchemaError("forecast_period is not time - forecast_reference_time")
    return ds


def make_forecast(
    data: Any,
    *,
    like: xr.Dataset,
    reference_time: Any,
    variable: str | None = None,
    source: str,
    realization: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap forecast fields in the data model on the grid of ``like``.

    Args:
        data: array shaped ``(lead, [realization], [flow], y, x)``; lead ``k``
            (0-based) is valid at ``reference_time + (k + 1) * time_step``.
        like: an observation dataset on the same grid (CRS, x, y, lat/lon and
            ``time_step`` are taken from it).
        reference_time: the forecast's issue time (time of the last input).
        variable: quantity name; defaults to the first one in ``like``.
        source: what made the forecast (model preset or baseline name).
        realization: ensemble member numbers when ``data`` has that dim.
    """
    variable = variable or data_variables(like)[0]
    step = time_step(like)
    reference_time = pd.Timestamp(reference_time)
    n_lead = np.shape(data)[0]
    periods = pd.to_timedelta(np.arange(1, n_lead + 1) * step.value, unit="ns")
    valid = (reference_time + periods).values.astype("datetime64[ns]")
    template = like[variable]
    dims = ("time",) + (("realization",) if realization is not None else ()) + template.dims[1:]
    coords = {name: like.coords[name] for name in ("x", "y", "lat", "lon", "crs", "flow") if name in like.coords}
    coords["time"] = ("time", valid, like["time"].attrs)
    coords["forecast_reference_time"] = ((), reference_time.to_datetime64().astype("datetime64[ns]"),
                                         {"standard_name": "forecast_reference_time",
                                          "long_name": "forecast issue time"})
    coords["forecast_period"] = ("time", periods.values,
                                 {"standard_name": "forecast_period", "long_name": "lead time"})
    if realization is not None:
        coords["realization"] = ("realization", np.asarray(realization, dtype="i4"),
                                 {"standard_name": "realization", "long_name": "ensemble member"})
    ds = xr.Dataset({variable: (dims, data, dict(template.attrs))}, coords=coords)
    ds.attrs.update({k: v for k, v in like.attrs.items() if k in ("Conventions", "time_step")})
    ds.attrs.update({"source": source, "observation_source": like.attrs.get("source", "")})
    ds.attrs.update(attrs or {})
    return validate(ds, forecast=True)
