"""Cross-check nowcast.verification against pysteps and `scores` on real FMI radar composites.

Earlier composites are issued as forecasts of later ones; every score must
match the reference implementation to 1e-6. Where a reference counts NaN
(outside radar range) as dry, it gets only the valid cells, or a fully valid
crop, since nowcast leaves NaN cells out.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from verification_data import fmi_observations, persistence

from nowcast.schema import make_forecast
from nowcast.verification import align, crps_sums, rank_histogram_sums, score_forecast
from nowcast.verification.spatial import rapsd

pytestmark = pytest.mark.realdata

THRESHOLDS = (0.5, 1.0, 5.0)
# A 256 x 256 km block of the composite inside radar range everywhere, with
# 38 % of cells >= 1 mm/h and 1.4 % >= 5 mm/h at 15:45-16:05 UTC.
FULL_COVER = (slice(592, 848), slice(208, 464))
TOL = dict(rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def obs(shared_data):
    """FMI composites 2016-09-28 15:45..16:05 UTC (5 frames, 1226 x 760, 24 % NaN)."""
    return fmi_observations(shared_data, start=12, count=5)


@pytest.fixture(scope="module")
def deterministic(obs):
    """Persistence of 15:50 for 15:55, 16:00, 16:05 and our scores of it."""
    forecast = persistence(obs, issue=1, n_leads=3)
    scores = score_forecast(forecast, obs, thresholds=THRESHOLDS, fss_scales_km=(1.0, 10.0, 25.0),
                            data_range=40.0, spectrum=False).compute()
    fc, ob = align(forecast, obs)
    return scores, fc.values.astype("f8"), ob.values.astype("f8")


def test_no_value_sits_on_a_threshold(obs):
    # pysteps' contingency uses '>' and nowcast '>=': compare only on data where they agree.
    values = obs["rainrate"].values
    assert not any(np.any(values == np.float32(thr)) for thr in THRESHOLDS)
    assert 0.2 < np.isnan(values).mean() < 0.3


def test_categorical_scores_match_pysteps(deterministic):
    from pysteps.verification.detcatscores import det_cat_fct

    scores, fc, ob = deterministic
    names = {"POD": "pod", "FAR": "far", "CSI": "csi", "ETS": "ets", "HSS": "hss", "BIAS": "bias"}
    for lead in range(fc.shape[0]):
        valid = np.isfinite(fc[lead]) & np.isfinite(ob[lead])
        for k, thr in enumerate(THRESHOLDS):
            ref = det_cat_fct(fc[lead][valid], ob[lead][valid], thr, scores=list(names))
            for theirs, ours in names.items():
                np.testing.assert_allclose(scores[ours].values[lead, k], ref[theirs], **TOL, err_msg=ours)
            total = sum(int(scores[c].values[lead, k]) for c in ("hits", "misses", "false_alarms",
                                                                  "correct_negatives"))
            assert total == valid.sum() < fc[lead].size   # NaN cells are not correct negatives


def test_continuous_scores_match_pysteps(deterministic):
    from pysteps.verification.detcontscores import det_cont_fct

    scores, fc, ob = deterministic
    for lead in range(fc.shape[0]):
        ref = det_cont_fct(fc[lead], ob[lead], scores=["ME", "MAE", "RMSE", "corr_p"])  # pysteps skips NaN too
        for theirs, ours in {"ME": "me", "MAE": "mae", "RMSE": "rmse", "corr_p": "corr"}.items():
            np.testing.assert_allclose(scores[ours].values[lead], ref[theirs], **TOL, err_msg=ours)


def test_fss_matches_pysteps_inside_radar_range(obs):
    from pysteps.verification.spatialscores import fss

    crop = obs.isel(y=FULL_COVER[0], x=FULL_COVER[1])
    forecast = persistence(crop, issue=1, n_leads=3)
    ours = score_forecast(forecast, crop, thresholds=THRESHOLDS, fss_scales_km=(1.0, 10.0, 25.0),
                          spectrum=False)["fss"]
    fc, ob = (a.values.astype("f8") for a in align(forecast, crop))
    assert list(ours["scale_cells"].values) == [1, 10, 25]
    for lead in range(3):
        for k, thr in enumerate(THRESHOLDS):
            for j, cells in enumerate((1, 10, 25)):
                np.testing.assert_allclose(ours.values[lead, k, j], fss(fc[lead], ob[lead], thr, cells), **TOL)


def test_fss_leaves_cells_outside_radar_range_out(obs):
    # A forecast that rains where the radar sees nothing (NaN) but equals the
    # observation elsewhere is perfect; counting NaN as dry would penalise it.
    frame = obs["rainrate"].values[-1]
    wet_outside = np.where(np.isnan(frame), 20.0, frame)
    forecast = make_forecast(wet_outside[None], like=obs.isel(time=slice(0, 4)),
                             reference_time=obs["time"].values[-2], source="wet outside")
    scores = score_forecast(forecast, obs, thresholds=(1.0,), fss_scales_km=(10.0,), spectrum=False)
    assert float(scores["fss"].squeeze()) == pytest.approx(1.0)
    assert float(scores["far"].squeeze()) == 0.0


def test_power_spectrum_matches_pysteps(obs):
    from pysteps.utils.spectral import rapsd as pysteps_rapsd

    field = obs["rainrate"].values[0][FULL_COVER].astype("f8")
    ref, freq = pysteps_rapsd(field, fft_method=np.fft, return_freq=True, d=1.0)
    ours, wavelength = rapsd(field[None], resolution_km=1.0)
    np.testing.assert_allclose(ours[0], ref[1:], **TOL)
    np.testing.assert_allclose(wavelength, 1.0 / freq[1:], **TOL)


def test_ssim_and_psnr_match_scikit_image(obs):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (dev extra) is the SSIM/PSNR reference")
    peak_signal_noise_ratio, structural_similarity = metrics.peak_signal_noise_ratio, metrics.structural_similarity

    crop = obs.isel(y=FULL_COVER[0], x=FULL_COVER[1])
    forecast = persistence(crop, issue=1, n_leads=2)
    scores = score_forecast(forecast, crop, thresholds=(), data_range=40.0, spectrum=False)
    fc, ob = (a.values.astype("f8") for a in align(forecast, crop))
    for lead in range(2):
        ref_ssim = structural_similarity(ob[lead], fc[lead], data_range=40.0)
        ref_psnr = peak_signal_noise_ratio(ob[lead], fc[lead], data_range=40.0)
        np.testing.assert_allclose(scores["ssim"].values[lead], ref_ssim, **TOL)
        np.testing.assert_allclose(scores["psnr"].values[lead], ref_psnr, **TOL)


@pytest.fixture(scope="module")
def ensemble(obs):
    """Members: the composites of 15:45..16:00; observation: 16:05 (one lead)."""
    members = obs["rainrate"].values[:4]
    forecast = make_forecast(members[None], like=obs.isel(time=slice(0, 4)), reference_time=obs["time"].values[3],
                             source="lagged ensemble", realization=range(4))
    scores = score_forecast(forecast, obs, thresholds=THRESHOLDS, fss_scales_km=(), spectrum=False).compute()
    fc, ob = align(forecast, obs)
    return scores, fc.values[0].astype("f8"), ob.values[0].astype("f8")


def test_crps_matches_scores_and_pysteps(ensemble):
    from pysteps.verification.probscores import CRPS
    from scores.probability import crps_for_ensemble

    scores, members, ob = ensemble
    valid = np.isfinite(ob) & np.isfinite(members).all(axis=0)
    ref = crps_for_ensemble(xr.DataArray(members[:, valid], dims=("member", "cell")),
                            xr.DataArray(ob[valid], dims="cell"), "member", method="ecdf")
    np.testing.assert_allclose(float(scores["crps"].squeeze()), float(ref), **TOL)
    # pysteps' CRPS drops a term wherever the observation equals a member
    # (common with quantised radar data), so it is compared without ties.
    no_tie = valid & ~(members == ob).any(axis=0)
    ours = crps_sums(*_cells(members, ob, no_tie), dims=("cell",))
    np.testing.assert_allclose(float(ours["crps_sum"] / ours["crps_n"]),
                               CRPS(members[:, no_tie], ob[no_tie]), **TOL)


def test_rank_histogram_matches_scores_and_pysteps(ensemble):
    from pysteps.verification.ensscores import rankhist
    from scores.probability import rank_histogram

    scores, members, ob = ensemble
    valid = np.isfinite(ob) & np.isfinite(members).all(axis=0)
    # With x_min = 0.5 mm/h (the lowest threshold): ties (dry cells) are shared
    # among ranks exactly as scores does; pysteps draws them at random, so it
    # is compared on the cells without ties.
    x_min = min(THRESHOLDS)
    keep = valid & ((ob >= x_min) | (members >= x_min).any(axis=0))
    low_f, low_o = np.where(members < x_min, x_min - 1, members), np.where(ob < x_min, x_min - 1, ob)
    ref = rank_histogram(xr.DataArray(low_f[:, keep], dims=("member", "cell")),
                         xr.DataArray(low_o[keep], dims="cell"), "member")
    np.testing.assert_allclose(scores["rank_histogram"].squeeze().values, ref.values, **TOL)

    no_tie = keep & ~(low_f == low_o).any(axis=0)
    counts = rank_histogram_sums(*_cells(members, ob, no_tie), dims=("cell",))["rank_count"]
    np.testing.assert_array_equal(counts.values, rankhist(members[:, no_tie], ob[no_tie], normalize=False))


def _cells(members: np.ndarray, ob: np.ndarray, cells: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    """The selected cells as (realization, cell) and (cell,) DataArrays."""
    return (xr.DataArray(members[:, cells], dims=("realization", "cell")),
            xr.DataArray(ob[cells], dims="cell"))


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # pysteps' empty bins
def test_reliability_matches_pysteps(ensemble):
    from pysteps.postprocessing.ensemblestats import excprob
    from pysteps.verification.probscores import reldiag

    scores, members, ob = ensemble
    valid = np.isfinite(ob) & np.isfinite(members).all(axis=0)
    for k, thr in enumerate(THRESHOLDS):
        prob = excprob(members[:, valid][:, None], thr)[0]
        ref_prob, ref_freq = reldiag(prob, ob[valid], thr, n_bins=10, min_count=1)
        np.testing.assert_allclose(scores["forecast_probability"].values[0, k], ref_prob, **TOL)
        np.testing.assert_allclose(scores["observed_frequency"].values[0, k], ref_freq, **TOL)
        brier = np.mean((prob - (ob[valid] >= thr)) ** 2)
        np.testing.assert_allclose(scores["brier"].values[0, k], brier, **TOL)
