"""Baselines: persistence, Lagrangian extrapolation, historical average, motion."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from nowcast import baselines
from nowcast.baselines import estimate_motion, historical_average, lagrangian_extrapolation, persistence
from nowcast.schema import make_dataset, validate
from nowcast.synthetic import synthetic_radar, synthetic_traffic


@pytest.fixture(scope="module")
def radar():
    return synthetic_radar(30, seed=2)


@pytest.fixture(scope="module")
def traffic():
    return synthetic_traffic(21, start="2015-03-02", seed=4)


def mae(forecast: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error over pixels where both are finite."""
    ok = np.isfinite(forecast) & np.isfinite(truth)
    return float(np.abs(forecast[ok] - truth[ok]).mean())


def check_lead_times(forecast, obs, issue, n_leads):
    leads = pd.to_timedelta(np.arange(1, n_leads + 1) * pd.Timedelta(obs.attrs["time_step"]))
    assert pd.Timestamp(forecast["forecast_reference_time"].values) == pd.Timestamp(issue)
    np.testing.assert_array_equal(forecast["time"].values, (pd.Timestamp(issue) + leads).values)
    np.testing.assert_array_equal(forecast["forecast_period"].values, leads.values)


def test_persistence_repeats_the_issue_frame(radar):
    issue = radar["time"].values[20]
    fc = persistence(radar, 6, at=issue)
    validate(fc, forecast=True)
    check_lead_times(fc, radar, issue, 6)
    assert fc.attrs["source"] == "persistence"
    assert fc["rainrate"].attrs["units"] == "mm h-1"
    for k in range(6):
        np.testing.assert_array_equal(fc["rainrate"].values[k], radar["rainrate"].values[20])
    # Default issue time: the last observation.
    issued = persistence(radar, 1)["forecast_reference_time"].values
    assert pd.Timestamp(issued) == pd.Timestamp(radar["time"].values[-1])


def test_lagrangian_beats_persistence_at_30_min(radar):
    obs = radar.isel(time=slice(0, 18))
    truth = radar["rainrate"].values[18:24]
    lagrangian = lagrangian_extrapolation(obs, 6)
    eulerian = persistence(obs, 6)
    validate(lagrangian, forecast=True)
    check_lead_times(lagrangian, obs, obs["time"].values[-1], 6)
    assert lagrangian.attrs["source"] == "lagrangian"
    rain = lagrangian["rainrate"].values
    assert rain.dtype == np.float32 and np.nanmin(rain) == 0.0
    # Rain flowing in from outside the domain is unknown: NaN only near the upwind edge.
    assert 0.0 < np.isnan(rain[-1]).mean() < 0.25 and not np.isnan(rain[-1][64:192, 64:192]).any()
    lag_mae = mae(rain[5], truth[5])
    pers_mae = mae(eulerian["rainrate"].values[5], truth[5])
    assert lag_mae < 0.8 * pers_mae, (lag_mae, pers_mae)


def _pysteps_extrapolation(frames: np.ndarray, n_leads: int, backward: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Motion and leads as the plain pysteps calls give them (dBR, LK, chained one-step advection)."""
    from pysteps import motion
    from pysteps.extrapolation.semilagrangian import extrapolate
    from pysteps.utils.transformation import dB_transform

    dbr = dB_transform(frames.astype("f8"), threshold=0.1, zerovalue=-15.0)[0]
    velocity = motion.get_method("LK")(dbr)
    displacement, leads = None, []
    for _ in range(n_leads):
        warped, displacement = extrapolate(dbr[-1], -velocity if backward else velocity, 1, outval=np.nan,
                                           allow_nonfinite_values=True, displacement_prev=displacement,
                                           return_displacement=True)
        leads.append(warped[0])
    leads = np.array(leads)
    with np.errstate(invalid="ignore"):
        rates = np.where(leads >= -10.0, 10.0 ** (leads / 10.0), 0.0)
    rates[~np.isfinite(leads)] = np.nan
    return velocity, rates.astype("f4")


@pytest.mark.parametrize("band_rows,chunk_cells", [(128, 2**17), (7, 700)])
def test_banded_chunked_extrapolation_equals_the_pysteps_calls(radar, monkeypatch, band_rows, chunk_cells):
    """Bands and chunks (forced small on this 256 x 256 grid) leave every value as pysteps computes it."""
    monkeypatch.setattr(baselines, "BAND_ROWS", band_rows)
    monkeypatch.setattr(baselines, "INTERP_CHUNK_CELLS", chunk_cells)
    obs = radar.isel(time=slice(10, 13)).load()
    obs["rainrate"][:, :40, :] = np.nan  # no coverage: the north of the domain and a hole
    obs["rainrate"][:, 100:120, 30:90] = np.nan
    velocity, expected = _pysteps_extrapolation(obs["rainrate"].values, 7)
    np.testing.assert_array_equal(baselines.motion_field(obs["rainrate"].values), velocity)
    np.testing.assert_array_equal(lagrangian_extrapolation(obs, 7)["rainrate"].values, expected)
    frames = np.repeat(obs["rainrate"].values[-1:], 5, axis=0)
    _, back = _pysteps_extrapolation(obs["rainrate"].values, 5, backward=True)
    np.testing.assert_array_equal(baselines.advect(frames, velocity, backward=True), back)


def test_motion_matches_the_generator(radar):
    motion = estimate_motion(radar, at=radar["time"].values[15])
    assert motion.dims == ("component", "y", "x")
    assert list(motion["component"].values) == ["x", "y"]
    assert motion.shape == (2, 256, 256)
    # Generator motion: m/s (east, north) -> cells per 5-min step (x, y on a north-up grid).
    true = np.array(radar.attrs["advection_velocity"]) * 300.0 / 1000.0
    est = motion.mean(("y", "x")).values
    assert np.hypot(*est) == pytest.approx(np.hypot(*true), rel=0.2)
    cos = est @ true / (np.hypot(*est) * np.hypot(*true))
    assert np.degrees(np.arccos(min(cos, 1.0))) < 15.0


def test_unknown_issue_time_is_named(radar):
    with pytest.raises(ValueError, match="2024-06-01T12:07:00 is not in the observations"):
        persistence(radar, 3, at="2024-06-01T12:07")
    with pytest.raises(ValueError, match="2024-06-02T00:00:00"):
        lagrangian_extrapolation(radar, 3, at=datetime(2024, 6, 2))


def test_extrapolation_needs_consecutive_frames(radar):
    gappy = radar.isel(time=[0, 1, 3, 4])
    with pytest.raises(ValueError, match="not consecutive"):
        lagrangian_extrapolation(gappy, 2, at=gappy["time"].values[2])
    with pytest.raises(ValueError, match="only 2"):
        lagrangian_extrapolation(radar, 2, at=radar["time"].values[1])


def test_traffic_baselines_keep_the_flow_dim(traffic):
    issue = traffic["time"].values[-10]
    for fc in (persistence(traffic, 4, at=issue), historical_average(traffic, 4, at=issue)):
        validate(fc, forecast=True)
        check_lead_times(fc, traffic, issue, 4)
        assert fc["crowd_flow"].dims == ("time", "flow", "y", "x")
        assert list(fc["flow"].values) == ["inflow", "outflow"]
    with pytest.raises(ValueError, match="crowd_flow"):
        lagrangian_extrapolation(traffic, 2)


def test_historical_average_is_the_mean_of_past_weeks(traffic):
    issue = pd.Timestamp(traffic["time"].values[-10])
    fc = historical_average(traffic, 3, at=issue, weeks=2)
    assert fc.attrs["source"] == "historical_average"
    valid = issue + pd.Timedelta("30min") * 2
    expected = (traffic["crowd_flow"].sel(time=valid - pd.Timedelta("7D"))
                + traffic["crowd_flow"].sel(time=valid - pd.Timedelta("14D"))) / 2
    np.testing.assert_allclose(fc["crowd_flow"].values[1], expected.values, rtol=1e-6)
    # It knows the daily cycle: beats persistence over the next 3 hours on a workday.
    issue = pd.Timestamp("2015-03-19T22:30")  # 06:30 Beijing time, before the morning peak
    truth = traffic["crowd_flow"].sel(time=slice(issue + pd.Timedelta("30min"), None)).values[:6]
    assert mae(historical_average(traffic, 6, at=issue)["crowd_flow"].values, truth) < \
        0.5 * mae(persistence(traffic, 6, at=issue)["crowd_flow"].values, truth)
    with pytest.raises(ValueError, match="no observation"):
        historical_average(traffic, 2, at=traffic["time"].values[100])


def read_pysteps_frames(paths, importer, window=(slice(None), slice(None)), **kwargs):
    """Rain-rate dataset from files read with a pysteps importer, cut to ``window`` (rows, cols)."""
    from pysteps.io import get_method
    from pysteps.utils.conversion import to_rainrate

    frames, times = [], []
    for path, time in paths:
        field, _, meta = get_method(importer, "importer")(str(path), **kwargs)
        rate, meta = to_rainrate(field, meta)
        frames.append(rate.astype("f4")[window])
        times.append(time)
    ny, nx = field.shape
    x = (meta["x1"] + (np.arange(nx) + 0.5) * meta["xpixelsize"])[window[1]]
    y = (meta["y2"] - (np.arange(ny) + 0.5) * meta["ypixelsize"])[window[0]]
    return make_dataset(np.stack(frames), times=times, x=x, y=y, crs=meta["projection"],
                        source=meta["institution"], time_step="5min")


@pytest.mark.realdata
def test_extrapolation_on_fmi_frames(shared_data):
    folder = shared_data / "radar" / "fmi" / "pgm" / "20160928"
    times = pd.DatetimeIndex(["2016-09-28T16:00", "2016-09-28T16:05", "2016-09-28T16:10", "2016-09-28T16:40"])
    paths = [(folder / f"{t:%Y%m%d%H%M}_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", t) for t in times]
    # Southern Finland, 512 km x 512 km: rain over land, no coverage over the sea to the west.
    ds = read_pysteps_frames(paths, "fmi_pgm", window=(slice(448, 960), slice(0, 512)), gzipped=True)
    obs = ds.isel(time=slice(0, 3))
    fc = lagrangian_extrapolation(obs, 6)
    validate(fc, forecast=True)
    check_lead_times(fc, obs, "2016-09-28T16:10", 6)
    rain = fc["rainrate"].values
    # Outside radar coverage stays unknown; inside, the forecast is rain or dry.
    assert np.isnan(rain[0][np.isnan(obs["rainrate"].values[-1])]).mean() > 0.95
    assert np.nanmax(rain) > 5.0
    truth = ds["rainrate"].values[-1]
    assert mae(rain[-1], truth) < mae(persistence(obs, 6)["rainrate"].values[-1], truth)
    motion = estimate_motion(obs)
    assert 0.5 < float(np.hypot(*motion.mean(("y", "x")).values)) < 10.0  # km per 5 min


@pytest.mark.realdata
def test_extrapolation_on_meteoswiss_frames(shared_data):
    folder = shared_data / "radar" / "mch" / "20150515"
    times = pd.date_range("2015-05-15T17:00", "2015-05-15T17:10", freq="5min")
    paths = [(next(folder.glob(f"AQC{t:%y%j%H%M}?_00005.801.gif")), t) for t in times]
    obs = read_pysteps_frames(paths, "mch_gif", product="AQC", unit="mm", accutime=5.0)
    fc = lagrangian_extrapolation(obs, 3)
    validate(fc, forecast=True)
    assert fc["rainrate"].shape == (3, 640, 710)
    assert np.nanmax(fc["rainrate"].values) > 1.0
