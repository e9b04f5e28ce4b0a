"""Pair a forecast with the observations valid at its lead times.

Scores are indexed by lead time (``forecast_period``), not by valid time, so
that forecasts issued at different times aggregate by lead.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.grids import Grid
from nowcast.schema import data_variables, validate

log = logging.getLogger(__name__)

LEAD = "forecast_period"
REALIZATION = "realization"
# Coordinates that differ between cases (or are only metadata) and would
# stop accumulators of different forecasts from adding up.
_CASE_COORDS = ("time", "forecast_reference_time", "lat", "lon", "crs")


class VerificationError(ValueError):
    """Forecast and observations cannot be compared (names what and why)."""


def align(forecast: xr.Dataset, obs: xr.Dataset, variable: str | None = None) -> tuple[xr.DataArray, xr.DataArray]:
    """Forecast and observed fields at the forecast's valid times, indexed by lead.

    Args:
        forecast: a data-model forecast (:func:`nowcast.schema.make_forecast`).
        obs: observations on the same grid (e.g. :func:`nowcast.archive.open_archive`);
            may be lazy (dask), nothing is loaded here.
        variable: the quantity to compare; defaults to the forecast's first one.

    Returns:
        ``(fc, ob)``: DataArrays with dims ``(forecast_period, [realization],
        [flow], y, x)`` and ``(forecast_period, [flow], y, x)``, sharing the
        forecast's ``x``/``y``. Lead times without an observation are dropped
        (logged).

    Raises:
        VerificationError: different grids, variables or units, or no
            observation at any valid time.
    """
    validate(forecast, forecast=True)
    variable = variable or data_variables(forecast)[0]
    source = forecast.attrs.get("source", "forecast")
    if variable not in forecast:
        raise VerificationError(f"{source}: forecast has no variable {variable!r}")
    if variable not in obs:
        raise VerificationError(f"{source}: observations have no {variable!r} (they have {data_variables(obs)})")
    problem = Grid.of(obs).same_as(Grid.of(forecast))
    if problem:
        raise VerificationError(f"{source}: forecast grid does not match the observations: {problem}")
    units = forecast[variable].attrs.get("units"), obs[variable].attrs.get("units")
    if units[0] != units[1]:
        raise VerificationError(f"{source}: forecast units {units[0]!r} differ from observation units {units[1]!r}")
    valid = pd.DatetimeIndex(forecast["time"].values)
    present = valid.isin(pd.DatetimeIndex(obs["time"].values))
    if not present.any():
        raise VerificationError(
            f"{source}: no observation at any valid time {valid[0]:%Y-%m-%d %H:%M}..{valid[-1]:%H:%M}; "
            f"observations cover {_span(obs)}")
    if not present.all():
        log.warning("%s: %d of %d lead times have no observation and are not scored",
                    source, int((~present).sum()), len(valid))
    fc = forecast[variable].isel(time=np.flatnonzero(present))
    ob = obs[variable].sel(time=fc["time"].values)
    lead = fc[LEAD].values
    fc = _by_lead(fc, lead)
    ob = _by_lead(ob, lead).assign_coords(x=fc["x"], y=fc["y"])
    return fc, ob


def _by_lead(da: xr.DataArray, lead: np.ndarray) -> xr.DataArray:
    da = da.drop_vars([c for c in da.coords if c in _CASE_COORDS + (LEAD,)])
    da = da.assign_coords({LEAD: ("time", lead)}).swap_dims(time=LEAD)
    return da.drop_vars("time", errors="ignore")


def _span(ds: xr.Dataset) -> str:
    if ds.sizes["time"] == 0:
        return "no time"
    t = pd.DatetimeIndex(ds["time"].values)
    return f"{t[0]:%Y-%m-%d %H:%M}..{t[-1]:%Y-%m-%d %H:%M}"


def valid_mask(fc: xr.DataArray, ob: xr.DataArray) -> xr.DataArray:
    """True where the observation and (every member of) the forecast are finite.

    NaN marks cells outside radar range: they are left out of every score,
    never counted as dry.
    """
    fc_ok = fc.notnull()
    if REALIZATION in fc.dims:
        fc_ok = fc_ok.all(REALIZATION)
    return fc_ok & ob.notnull()


def spatial_whole(da: xr.DataArray) -> xr.DataArray:
    """``da`` with ``y`` and ``x`` in one dask chunk (windowed filters need whole fields)."""
    if da.chunks is None:
        return da
    return da.chunk({"y": -1, "x": -1})


def support_mask(forecasts: Sequence[xr.Dataset], variable: str | None = None) -> xr.DataArray:
    """True at the valid times and cells where every one of ``forecasts`` (one case) has a value.

    Dims ``(time, [flow], y, x)``, over the valid times all forecasts share.

    Raises:
        VerificationError: the forecasts share no valid time.
    """
    variable = variable or data_variables(forecasts[0])[0]
    shared = None
    for fc in forecasts:
        ok = fc[variable].notnull()
        if REALIZATION in ok.dims:
            ok = ok.all(REALIZATION)
        ok = ok.drop_vars([c for c in ok.coords if c not in ok.dims])
        shared = ok if shared is None else (shared & ok)  # xarray aligns on the shared valid times
    if shared.sizes["time"] == 0:
        raise VerificationError("the forecasts of the case share no valid time")
    return shared


def common_support(forecasts: dict[str, xr.Dataset], variable: str | None = None) -> dict[str, xr.Dataset]:
    """The forecasts of one case masked to the cells and valid times every method forecasts.

    Lagrangian extrapolation has no value where rain would enter from outside
    the domain; a model that forecasts everywhere would otherwise be scored on
    more (and easier or harder) cells. Masking all methods to the cells and
    valid times they share (:func:`support_mask`) makes their scores
    comparable case by case.

    Raises:
        VerificationError: the forecasts share no valid time.
    """
    if not forecasts:
        return {}
    first = next(iter(forecasts.values()))
    variable = variable or data_variables(first)[0]
    shared = support_mask(list(forecasts.values()), variable)
    return {name: restrict(fc, shared, variable) for name, fc in forecasts.items()}


def restrict(forecast: xr.Dataset, support: xr.DataArray, variable: str | None = None) -> xr.Dataset:
    """``forecast`` at the valid times of ``support``, NaN where it is False."""
    variable = variable or data_variables(forecast)[0]
    forecast = forecast.sel(time=support["time"].values)
    return forecast.assign({variable: forecast[variable].where(support)})
