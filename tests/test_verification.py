"""Behaviour of nowcast.verification on small synthetic fields (no real data needed)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

from nowcast.grids import beijing_grid, radar_grid
from nowcast.schema import make_dataset, make_forecast
from nowcast.verification import (LEAD, VerificationError, accumulate, default_metrics, error_map, finalize, merge,
                                  rank_histogram_sums, scale_cells, score_forecast, scores_table)

START = pd.Timestamp("2024-06-01 12:00")


def rain_obs(n: int = 8, size: int = 48, seed: int = 0, nan_rows: int = 0) -> xr.Dataset:
    """Smooth showers (mm/h) moving east one cell per 5-min step; the top ``nan_rows`` out of range."""
    rng = np.random.default_rng(seed)
    z = gaussian_filter(rng.standard_normal((size, size + n)), 3.0)
    base = 10.0 * np.maximum(z / z.std() - 0.3, 0.0) ** 1.5      # ~40 % wet, up to ~40 mm/h
    data = np.stack([base[:, n - k:n - k + size] for k in range(n)]).astype("f4")
    data[:, :nan_rows] = np.nan
    grid = radar_grid(size, 2000.0)
    return make_dataset(data, times=pd.date_range(START, periods=n, freq="5min"), x=grid.x, y=grid.y,
                        crs=grid.crs, source="synthetic radar", time_step="5min")


def issue(obs: xr.Dataset, at: int, n_leads: int, source: str = "persistence", field=None) -> xr.Dataset:
    frame = obs["rainrate"].values[at] if field is None else field
    return make_forecast(np.repeat(frame[None], n_leads, 0), like=obs, reference_time=obs["time"].values[at],
                         source=source)


def test_cases_merge_by_lead_as_if_pooled():
    obs = rain_obs(10, nan_rows=5)
    cases = [issue(obs, 2, 3), issue(obs, 5, 3)]
    metrics = default_metrics(cases[0], thresholds=(1.0,), fss_scales_km=())
    merged = finalize(merge(accumulate(c, obs, metrics) for c in cases), metrics)
    assert list(merged[LEAD].values) == list(pd.to_timedelta([5, 10, 15], unit="min"))
    # Pool the two cases by hand: lead k compares frame `at` with frame `at + k`.
    for k in (1, 2, 3):
        f = np.concatenate([obs["rainrate"].values[at].ravel() for at in (2, 5)]).astype("f8")
        o = np.concatenate([obs["rainrate"].values[at + k].ravel() for at in (2, 5)]).astype("f8")
        ok = np.isfinite(f) & np.isfinite(o)
        f, o = f[ok], o[ok]
        hits = np.sum((f >= 1) & (o >= 1))
        at_lead = merged.sel({LEAD: pd.Timedelta(minutes=5 * k)}).squeeze("threshold")
        assert int(at_lead["hits"]) == hits
        assert float(at_lead["csi"]) == pytest.approx(
            hits / np.sum((f >= 1) | (o >= 1)), rel=1e-12)
        assert float(at_lead["corr"]) == pytest.approx(np.corrcoef(f, o)[0, 1], rel=1e-9)
        assert float(at_lead["rmse"]) == pytest.approx(np.sqrt(np.mean((f - o) ** 2)), rel=1e-9)


def test_nan_is_left_out_not_counted_as_dry():
    obs = rain_obs(4, nan_rows=12)
    wet = np.where(np.isnan(obs["rainrate"].values[1]), 50.0, obs["rainrate"].values[1])
    scores = score_forecast(issue(obs, 0, 1, field=wet), obs, thresholds=(1.0,), fss_scales_km=(8.0,))
    assert int(scores["false_alarms"].squeeze()) == 0
    assert float(scores["far"].squeeze()) == 0.0
    assert float(scores["fss"].squeeze()) == pytest.approx(1.0)
    assert float(scores["mae"].squeeze()) == pytest.approx(0.0)
    assert int(scores["n"].squeeze()) == (48 - 12) * 48


def test_lazy_on_dask_and_equal_to_eager():
    obs = rain_obs(8, nan_rows=3)
    forecast = issue(obs, 3, 4)
    eager = score_forecast(forecast, obs, data_range=30.0, openstl=True)
    lazy = score_forecast(forecast, obs.chunk({"time": 2}), data_range=30.0, openstl=True)
    assert all(lazy[name].chunks is not None for name in ("csi", "fss", "rmse", "ssim", "psd_forecast"))
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=1e-12)


def test_leads_without_observation_are_dropped(caplog):
    obs = rain_obs(6)
    forecast = issue(obs, 3, 4)     # valid at frames 4, 5, 6, 7: only 4 and 5 exist
    with caplog.at_level(logging.WARNING):
        scores = score_forecast(forecast, obs, thresholds=(1.0,))
    assert scores.sizes[LEAD] == 2
    assert "2 of 4 lead times have no observation" in caplog.text
    late = make_forecast(obs["rainrate"].values[:2], like=obs, reference_time=START + pd.Timedelta("1h"),
                         source="late")
    with pytest.raises(VerificationError, match="no observation at any valid time"):
        score_forecast(late, obs)


def test_other_grid_is_refused():
    obs = rain_obs(4)
    grid = radar_grid(48, 1000.0)
    other = make_dataset(obs["rainrate"].values, times=obs["time"].values, x=grid.x, y=grid.y, crs=grid.crs,
                         source="elsewhere", time_step="5min")
    with pytest.raises(VerificationError, match="forecast grid does not match"):
        score_forecast(issue(other, 0, 2), obs)


def test_fss_windows_are_converted_from_km_with_the_grid_resolution():
    assert scale_cells(radar_grid(48, 2000.0), (16.0, 1.0, 5.0)) == [8, 1, 2]
    scores = score_forecast(issue(rain_obs(4), 0, 2), rain_obs(4), fss_scales_km=(4.0, 16.0))
    assert list(scores["scale_cells"].values) == [2, 8]
    # Larger windows forgive displacement: FSS grows with the window.
    assert (scores["fss"].diff("scale") > 0).all()


def test_power_spectrum_shows_smoothing():
    obs = rain_obs(4)
    blurred = gaussian_filter(obs["rainrate"].values[1], 3.0)
    scores = score_forecast(issue(obs, 0, 1, field=blurred), obs, thresholds=())
    ratio = (scores["psd_forecast"] / scores["psd_observed"]).squeeze()
    # Blurring removes power at 8-20 km; the largest scales keep theirs.
    short = ratio.sel(wavelength=slice(20.0, 8.0))
    assert float(short.max()) < 0.3
    assert float(ratio.sel(wavelength=96.0)) > 0.9


def traffic(n: int = 6, seed: int = 1) -> xr.Dataset:
    grid = beijing_grid(8)
    rng = np.random.default_rng(seed)
    data = rng.poisson(100.0, (n, 2, 8, 8)).astype("f4")
    return make_dataset(data, times=pd.date_range(START, periods=n, freq="30min"), x=grid.x, y=grid.y,
                        crs=grid.crs, variable="crowd_flow", source="synthetic flows", time_step="30min")


def test_openstl_convention_sums_errors_over_each_frame():
    obs = traffic()
    cases = [make_forecast(obs["crowd_flow"].values[at:at + 2] + 3.0, like=obs,
                           reference_time=obs["time"].values[at - 1], source="plus three") for at in (1, 3)]
    metrics = default_metrics(cases[0], openstl=True)
    scores = finalize(merge(accumulate(c, obs, metrics) for c in cases), metrics)
    # OpenSTL: MSE = mean over (batch, time) of the sum over (C, H, W).
    pred = np.stack([c["crowd_flow"].values for c in cases])
    true = np.stack([obs["crowd_flow"].values[at:at + 2] for at in (1, 3)])
    per_lead = np.mean((pred - true) ** 2, axis=0).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(scores["mse_frame"].values, per_lead)
    np.testing.assert_allclose(scores["mse_frame"].values, 9.0 * 2 * 8 * 8)
    assert "csi" not in scores and "psd_forecast" not in scores     # counts have no default event threshold
    np.testing.assert_allclose(scores["rmse"].values, 3.0)
    assert scores["rmse"].attrs["units"] == "1"


def test_error_map_shows_where_errors_concentrate():
    obs = traffic()
    field = obs["crowd_flow"].values[2:4].copy()
    field[:, 0, 2, 5] += 40.0                         # inflow wrong in one cell
    forecast = make_forecast(field, like=obs, reference_time=obs["time"].values[1], source="one bad cell")
    rmse = error_map(forecast, obs, metric="rmse", over_leads=True)
    assert rmse.dims == ("flow", "y", "x")
    assert float(rmse.sel(flow="inflow").isel(y=2, x=5)) == pytest.approx(40.0)
    assert float(rmse.max()) == float(rmse.sel(flow="inflow").isel(y=2, x=5))
    assert error_map(forecast, obs, metric="mae").dims == (LEAD, "flow", "y", "x")


def test_ensemble_scores():
    obs = rain_obs(6, nan_rows=4)
    frames = obs["rainrate"].values
    one = make_forecast(frames[1:3][:, None], like=obs, reference_time=obs["time"].values[0], source="one member",
                        realization=[0])
    scores = score_forecast(one, obs, thresholds=(1.0,), fss_scales_km=())
    # A one-member ensemble: CRPS is the MAE, the Brier score the share of misclassified cells.
    np.testing.assert_allclose(scores["crps"].values, scores["mae"].values, rtol=1e-12)
    wrong = (scores["misses"] + scores["false_alarms"]) / scores["n"]
    np.testing.assert_allclose(scores["brier"].squeeze("threshold").values, wrong.squeeze("threshold").values)
    members = np.stack([frames[1:3] * s for s in (0.5, 1.0, 1.5)], axis=1)
    spread = make_forecast(members, like=obs, reference_time=obs["time"].values[0], source="three members",
                           realization=[0, 1, 2])
    scores = score_forecast(spread, obs, thresholds=(1.0,), fss_scales_km=())
    assert scores["rank_histogram"].sizes["rank"] == 4
    np.testing.assert_allclose(scores["rank_histogram"].sum("rank"), 1.0)
    assert "csi" in scores    # the ensemble mean gets the deterministic scores


def test_rank_histogram_shares_ties_between_ranks():
    members = xr.DataArray([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [5.0, 6.0, 7.0]], dims=("cell", "realization"))
    observed = xr.DataArray([2.0, 0.0, 9.0], dims="cell")
    counts = rank_histogram_sums(members, observed, dims=("cell",))["rank_count"]
    # cell 0: ranks 2-4 share 1/3 each; cell 1: all four ranks 1/4; cell 2: rank 4.
    np.testing.assert_allclose(counts.values, [0.25, 0.25 + 1 / 3, 0.25 + 1 / 3, 0.25 + 1 / 3 + 1.0])
    assert list(counts["rank"].values) == [1, 2, 3, 4]


def test_scores_table_is_tidy():
    obs = rain_obs(8)
    table = scores_table(score_forecast(issue(obs, 2, 3), obs, thresholds=(1.0, 5.0), fss_scales_km=(8.0, 16.0)))
    assert list(table.columns) == ["method", "lead_min", "metric", "threshold", "scale_km", "value"]
    assert set(table["method"]) == {"persistence"}
    assert sorted(table["lead_min"].unique()) == [5, 10, 15]
    assert len(table[table.metric == "csi"]) == 2 * 3
    assert len(table[table.metric == "fss"]) == 2 * 2 * 3
    assert table[table.metric == "rmse"]["threshold"].isna().all()
    assert {"pod", "far", "ets", "hss", "bias", "me", "mae", "corr"} <= set(table["metric"])


def test_common_support_scores_every_method_on_the_same_cells():
    from nowcast.baselines import lagrangian_extrapolation, persistence
    from nowcast.synthetic import synthetic_radar
    from nowcast.verification import common_support

    obs = synthetic_radar(12, size=48, seed=3)
    at = obs["time"].values[5]
    cases = {"lagrangian": lagrangian_extrapolation(obs, 4, at=at), "persistence": persistence(obs, 4, at=at)}
    assert cases["lagrangian"]["rainrate"].isnull().any() and not cases["persistence"]["rainrate"].isnull().any()
    masked = common_support(cases)
    nan = {name: fc["rainrate"].isnull().values for name, fc in masked.items()}
    np.testing.assert_array_equal(nan["lagrangian"], nan["persistence"])
    np.testing.assert_array_equal(nan["lagrangian"], cases["lagrangian"]["rainrate"].isnull().values)
