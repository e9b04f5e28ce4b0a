"""Score whole forecasts: align with observations, accumulate, merge cases, finalize.

``score_forecast`` is the one call for a single forecast. For many forecasts
(cases) of one method, ``accumulate`` each, ``merge`` the sums and
``finalize`` once: the scores are then per lead time over all cases, as if
all fields had been pooled.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import xarray as xr

from nowcast.grids import Grid
from nowcast.schema import data_variables
from nowcast.verification import metrics as m
from nowcast.verification.align import LEAD, REALIZATION, align
from nowcast.verification.continuous import continuous_scores, error_sums
from nowcast.verification.spatial import cell_size_km, scale_cells

log = logging.getLogger(__name__)

# Event thresholds used when none are given, in each quantity's units.
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "rainrate": (1.0, 5.0),          # mm h-1
    "accumulation": (1.0, 5.0),      # mm
    "reflectivity": (20.0, 35.0),    # dBZ
    "crowd_flow": (),                # counts: no natural event threshold
}
DEFAULT_FSS_SCALES_KM = (16.0,)


def default_metrics(
    forecast: xr.Dataset,
    *,
    thresholds: Sequence[float] | None = None,
    fss_scales_km: Sequence[float] = DEFAULT_FSS_SCALES_KM,
    data_range: float | None = None,
    openstl: bool = False,
    spectrum: bool | None = None,
) -> list[m.Metric]:
    """The metrics :func:`score_forecast` computes for ``forecast``.

    Args:
        forecast: the forecast (its variable, grid and members decide).
        thresholds: event thresholds in the variable's units; None takes
            :data:`DEFAULT_THRESHOLDS`; empty skips categorical scores and FSS.
        fss_scales_km: FSS window edges in km (converted to cells with the
            grid resolution); empty skips FSS.
        data_range: span of the data for SSIM and PSNR; None skips them.
        openstl: add OpenSTL's per-frame summed MSE/MAE (``mse_frame``, ``mae_frame``).
        spectrum: power spectra; None means yes except for crowd flows.
    """
    variable = data_variables(forecast)[0]
    thresholds = tuple(DEFAULT_THRESHOLDS.get(variable, ()) if thresholds is None else thresholds)
    grid = Grid.of(forecast)
    chosen: list[m.Metric] = [m.Continuous()]
    if thresholds:
        chosen.append(m.Categorical(thresholds))
        if fss_scales_km:
            cells = scale_cells(grid, fss_scales_km)
            chosen.append(m.FractionsSkillScore(thresholds, tuple(map(float, fss_scales_km)), tuple(cells)))
    if spectrum if spectrum is not None else variable != "crowd_flow":
        chosen.append(m.PowerSpectrum(cell_size_km(grid)))
    if openstl or data_range is not None:
        chosen.append(m.FrameScores(data_range))
    if REALIZATION in forecast.dims:
        chosen += [m.CRPS(), m.RankHistogram(x_min=min(thresholds) if thresholds else None)]
        if thresholds:
            chosen.append(m.Reliability(thresholds))
    return chosen


def reduce_dims(fc: xr.DataArray) -> tuple[str, ...]:
    """Dims a score is taken over by default: ``[flow], y, x`` (lead and members kept)."""
    return tuple(d for d in ("flow", "y", "x") if d in fc.dims)


def accumulate(forecast: xr.Dataset, obs: xr.Dataset, metrics: Sequence[m.Metric], *,
               dims: Sequence[str] | None = None, variable: str | None = None) -> xr.Dataset:
    """Sums of every metric for one forecast, indexed by ``forecast_period`` (lazy on dask input).

    Args:
        forecast: a data-model forecast; its ensemble mean feeds the
            deterministic metrics, its members the probabilistic ones.
        obs: observations covering (some of) its valid times.
        metrics: e.g. :func:`default_metrics`.
        dims: dims to reduce (default ``[flow], y, x``); metrics that need
            whole fields are skipped when ``y``/``x`` are kept.
        variable: the quantity to score (default: the forecast's first).

    Returns:
        One Dataset of all sums, attrs ``source``, ``variable``, ``units``.
    """
    fc, ob = align(forecast, obs, variable)
    dims = tuple(reduce_dims(fc) if dims is None else dims)
    members = REALIZATION in fc.dims
    deterministic = fc.mean(REALIZATION, skipna=False, keep_attrs=True) if members else fc
    whole_fields = "y" in dims and "x" in dims
    parts = []
    for metric in metrics:
        if metric.probabilistic and not members or metric.spatial and not whole_fields:
            continue
        parts.append(metric.accumulate(fc if metric.probabilistic else deterministic, ob, dims))
    sums = xr.merge(parts, combine_attrs="drop")
    sums.attrs.update(source=str(forecast.attrs.get("source", "forecast")), variable=fc.name,
                      units=str(fc.attrs.get("units", "")))
    return sums


def merge(sums: Iterable[xr.Dataset]) -> xr.Dataset:
    """Add sums of several cases (lead times missing from a case count as zero)."""
    sums = list(sums)
    if not sums:
        raise ValueError("nothing to merge")
    if len(sums) == 1:
        return sums[0]
    total = xr.concat(sums, dim="case", join="outer", fill_value=0, coords="minimal", compat="override",
                      combine_attrs="override").sum("case")
    return total.assign_attrs(sums[0].attrs)


def finalize(sums: xr.Dataset, metrics: Sequence[m.Metric]) -> xr.Dataset:
    """Scores of every metric whose sums are present, together with the sums."""
    # A metric skipped by accumulate (no members, y/x kept) has no sums.
    parts = [sums] + [metric.finalize(sums) for metric in metrics if metric.produces in sums]
    scores = xr.merge(parts, combine_attrs="override")
    for name in ("me", "mae", "rmse", "crps", "mae_frame"):
        if name in scores:
            scores[name].attrs.setdefault("units", sums.attrs.get("units", ""))
    return scores


def score_forecast(
    forecast: xr.Dataset,
    obs: xr.Dataset,
    *,
    thresholds: Sequence[float] | None = None,
    fss_scales_km: Sequence[float] = DEFAULT_FSS_SCALES_KM,
    data_range: float | None = None,
    openstl: bool = False,
    spectrum: bool | None = None,
    variable: str | None = None,
) -> xr.Dataset:
    """Scores of one forecast against observations, per lead time.

    Args:
        forecast: a data-model forecast (deterministic or ensemble).
        obs: observations on the same grid (lazy archives stay lazy: the
            result is a lazy Dataset until computed).
        thresholds, fss_scales_km, data_range, openstl, spectrum: see
            :func:`default_metrics`.
        variable: the quantity to score (default: the forecast's first).

    Returns:
        Dataset indexed by ``forecast_period`` with, as available,
        ``pod far csi ets hss bias`` (lead, threshold), ``fss`` (lead,
        threshold, scale), ``me mae rmse corr`` (lead), ``psd_forecast``/
        ``psd_observed`` (lead, wavelength), ``ssim psnr mse_frame
        mae_frame`` (lead), ``crps`` (lead), ``rank_histogram`` (lead,
        rank), ``forecast_probability``/``observed_frequency`` (lead,
        threshold, probability_bin), ``brier`` (lead, threshold), plus the
        sums they come from.
    """
    chosen = default_metrics(forecast, thresholds=thresholds, fss_scales_km=fss_scales_km,
                             data_range=data_range, openstl=openstl, spectrum=spectrum)
    return finalize(accumulate(forecast, obs, chosen, variable=variable), chosen)


def error_map(forecasts: xr.Dataset | Sequence[xr.Dataset], obs: xr.Dataset, *,
              metric: str = "rmse", over_leads: bool = False) -> xr.DataArray:
    """Per-cell ``me``, ``mae``, ``rmse`` or ``corr`` over cases (and leads): where errors concentrate.

    Args:
        forecasts: one forecast or several cases of one method.
        obs: observations.
        metric: a continuous score name.
        over_leads: pool all lead times into one map.

    Returns:
        DataArray ``([forecast_period], [flow], y, x)`` in the variable's units.
    """
    cases = [forecasts] if isinstance(forecasts, xr.Dataset) else list(forecasts)
    dims = (LEAD,) if over_leads else ()
    sums = []
    for forecast in cases:
        fc, ob = align(forecast, obs)
        if REALIZATION in fc.dims:
            fc = fc.mean(REALIZATION, skipna=False, keep_attrs=True)
        sums.append(error_sums(fc, ob, dims))
    out = continuous_scores(merge(sums))[metric]
    return out.assign_attrs(units=fc.attrs.get("units", ""))
