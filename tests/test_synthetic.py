"""Synthetic radar and traffic sources: layout, determinism and realism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest

from nowcast.grids import Grid, radar_grid
from nowcast.schema import SchemaError, validate
from nowcast.synthetic import WORK_SPOTS, synthetic_radar, synthetic_traffic


@pytest.fixture(scope="module")
def radar():
    return synthetic_radar(36, seed=3)


@pytest.fixture(scope="module")
def traffic():
    # 2015-04-01 (Wed) .. 2015-04-28: Tomb-Sweeping Day 04-05 (Sun) and 04-06 (Mon).
    return synthetic_traffic(28, start="2015-04-01", seed=1)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def local_times(ds) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(ds["time"].values).tz_localize("UTC").tz_convert(ds.attrs["timezone"])


def test_radar_layout(radar):
    validate(radar, forecast=False)
    rain = radar["rainrate"]
    assert rain.dims == ("time", "y", "x")
    assert rain.shape == (36, 256, 256)
    assert rain.dtype == np.float32
    assert rain.attrs["units"] == "mm h-1"
    assert radar.attrs["time_step"] == "PT5M"
    assert "synthetic" in radar.attrs["source"] and "seed=3" in radar.attrs["source"]
    assert pd.Timestamp(radar["time"].values[0]) == pd.Timestamp("2024-06-01T12:00")
    assert np.all(np.diff(radar["time"].values) == np.timedelta64(5, "m"))
    expected = radar_grid()
    assert np.allclose(radar["x"], expected.x) and np.allclose(radar["y"], expected.y)
    # Centred on FMI's Vantaa radar.
    assert float(radar["lat"][128, 128]) == pytest.approx(60.27, abs=0.01)
    assert float(radar["lon"][128, 128]) == pytest.approx(24.87, abs=0.02)


def test_radar_other_grid_and_step():
    ds = synthetic_radar(3, size=64, resolution=2000.0, step="10min", seed=1)
    validate(ds)
    assert ds["rainrate"].shape == (3, 64, 64)
    assert ds.attrs["time_step"] == "PT10M"
    assert float(ds["x"][1] - ds["x"][0]) == 2000.0
    grid = Grid.from_bounds("EPSG:3067", 300_000, 6_600_000, 450_000, 6_700_000, 1000.0)  # not square
    ds = synthetic_radar(1, grid=grid)
    validate(ds)
    assert ds["rainrate"].shape == (1, 100, 150)
    assert 0.2 <= float((ds["rainrate"] > 0).mean()) <= 0.5


def test_radar_is_deterministic_for_a_seed():
    a = synthetic_radar(4, size=64, seed=7)["rainrate"].values
    b = synthetic_radar(4, size=64, seed=7)["rainrate"].values
    c = synthetic_radar(4, size=64, seed=8)["rainrate"].values
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_radar_intensities(radar):
    rain = radar["rainrate"].values
    assert np.isfinite(rain).all() and rain.min() == 0.0
    wet_fraction = (rain > 0).mean(axis=(1, 2))
    assert np.all((wet_fraction >= 0.2) & (wet_fraction <= 0.5)), wet_fraction
    wet = rain[rain > 0]
    assert wet.min() >= 0.1
    assert 10.0 < rain.max() < 300.0  # convective peaks of tens of mm/h
    # Log-normal: heavily skewed rates, near-symmetric logarithms.
    skew = lambda v: float(((v - v.mean()) ** 3).mean() / v.std() ** 3)  # noqa: E731
    assert skew(wet) > 3.0
    assert abs(skew(np.log(wet))) < 0.6
    # Rain intensity grows or decays slowly: the wet area changes by < 3 % per frame.
    assert np.abs(np.diff(wet_fraction)).max() < 0.03


def test_radar_spatial_structure(radar):
    from pysteps.utils.spectral import rapsd

    field = radar["rainrate"].values[18]
    lags = [corr(field[:, :-lag], field[:, lag:]) for lag in (1, 2, 4, 8, 16, 32)]
    assert lags[0] > 0.8
    assert all(a > b for a, b in zip(lags, lags[1:])), lags
    assert lags[-1] < 0.5
    power, freq = rapsd(field, fft_method=np.fft, return_freq=True)
    band = (freq > 1 / 64) & (freq < 1 / 4)  # wavelengths 4-64 km
    slope = np.polyfit(np.log(freq[band]), np.log(power[band]), 1)[0]
    assert -4.0 < slope < -2.0


def test_radar_moves_coherently(radar):
    rain = radar["rainrate"].values
    u, v = radar.attrs["advection_velocity"]  # m/s east, north
    speed = np.hypot(u, v)
    assert 5.0 <= speed <= 13.0
    steps = 6  # +30 min
    sx, sy = (int(round(c * 300.0 * steps / 1000.0)) for c in (u, -v))  # pixels (cols right, rows down)
    ny, nx = rain.shape[1:]
    euler, lagrange = [], []
    for t in range(0, rain.shape[0] - steps, 5):
        a, b = rain[t], rain[t + steps]
        euler.append(corr(a, b))
        lagrange.append(corr(a[max(0, -sy):ny - max(0, sy), max(0, -sx):nx - max(0, sx)],
                             b[max(0, sy):ny - max(0, -sy), max(0, sx):nx - max(0, -sx)]))
    assert np.mean(lagrange) > 0.6
    assert np.mean(lagrange) > np.mean(euler) + 0.2
    # ... and evolves: correlation after advection decays with lead time.
    assert corr(rain[0], rain[1]) > corr(rain[0], rain[2]) > corr(rain[0], rain[6])


def test_traffic_layout(traffic):
    validate(traffic, forecast=False)
    flow = traffic["crowd_flow"]
    assert flow.dims == ("time", "flow", "y", "x")
    assert flow.shape == (28 * 48, 2, 32, 32)
    assert list(traffic["flow"].values) == ["inflow", "outflow"]
    assert flow.dtype == np.float32
    values = flow.values
    assert values.min() >= 0 and np.array_equal(values, np.round(values))
    assert 300 < values.max() < 3000
    assert traffic.attrs["time_step"] == "PT30M"
    # Local midnight in Beijing (UTC+8) is 16:00 UTC the day before.
    assert pd.Timestamp(traffic["time"].values[0]) == pd.Timestamp("2015-03-31T16:00")
    assert float(traffic["lat"].mean()) == pytest.approx(39.91, abs=0.02)
    assert traffic.attrs["holidays"] == "2015-04-05,2015-04-06"


def test_traffic_is_deterministic_for_a_seed():
    a = synthetic_traffic(2, seed=5)["crowd_flow"].values
    b = synthetic_traffic(2, seed=5)["crowd_flow"].values
    c = synthetic_traffic(2, seed=6)["crowd_flow"].values
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def totals_by_hour(traffic, days) -> pd.DataFrame:
    """Mean grid-total counts per local hour (rows) and flow (columns) over ``days``."""
    local = local_times(traffic)
    total = traffic["crowd_flow"].sum(("y", "x")).to_pandas()
    keep = np.isin(local.date, [pd.Timestamp(d).date() for d in days])
    return total[keep].groupby(local[keep].hour).mean()


def test_traffic_daily_cycle(traffic):
    workdays = pd.bdate_range("2015-04-07", "2015-04-28")
    hourly = totals_by_hour(traffic, workdays)
    night = hourly.loc[3, "inflow"]
    assert hourly.loc[8, "inflow"] > 4 * night
    assert hourly.loc[18, "inflow"] > 4 * night
    assert hourly.loc[8, "inflow"] > hourly.loc[11, "inflow"]


def test_traffic_weekly_and_holiday_effects(traffic):
    workdays = totals_by_hour(traffic, pd.bdate_range("2015-04-07", "2015-04-28"))
    weekends = totals_by_hour(traffic, ["2015-04-11", "2015-04-12", "2015-04-18", "2015-04-19"])
    holiday = totals_by_hour(traffic, ["2015-04-06"])  # a Monday off
    assert weekends.loc[8, "outflow"] < 0.6 * workdays.loc[8, "outflow"]
    assert weekends.loc[14, "inflow"] > workdays.loc[14, "inflow"]
    assert holiday.loc[8, "outflow"] < 0.6 * workdays.loc[8, "outflow"]
    assert holiday.loc[8, "outflow"] == pytest.approx(weekends.loc[8, "outflow"], rel=0.25)


def test_explicit_holidays_replace_the_calendar():
    ds = synthetic_traffic(7, start="2015-03-02", holidays=["2015-03-04", "2014-01-01"])
    assert ds.attrs["holidays"] == "2015-03-04"
    morning = totals_by_hour(ds, ["2015-03-04"]).loc[8, "outflow"]
    assert morning < 0.6 * totals_by_hour(ds, ["2015-03-03", "2015-03-05"]).loc[8, "outflow"]


def test_traffic_hot_spots_and_commuting_shift(traffic):
    lon, lat = WORK_SPOTS["Guomao CBD"][:2]
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True).transform(lon, lat)
    cbd = traffic["crowd_flow"].sel(x=x, y=y, method="nearest")
    local = local_times(traffic)
    workday = np.asarray(local.day_of_week < 5) & ~np.isin(local.date, [pd.Timestamp("2015-04-06").date()])
    by_hour = cbd[workday].to_pandas().groupby(local[workday].hour).mean()
    # People arrive at the CBD in the morning and leave in the evening.
    assert by_hour["inflow"].idxmax() in (8, 9)
    assert by_hour["outflow"].idxmax() in (17, 18, 19)
    median_cell = float(traffic["crowd_flow"].sel(flow="inflow")[workday].mean("time").median())
    assert by_hour.loc[8, "inflow"] > 5 * median_cell


def test_validate_rejects_traffic_without_flow(traffic):
    with pytest.raises(SchemaError, match="flow"):
        validate(traffic.isel(flow=0, drop=True))
