"""Maps and plots, drawn offline: real FMI radar on its own projection, synthetic crowd flows over Beijing."""

from __future__ import annotations

import logging

import matplotlib.image
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from verification_data import fmi_observations, persistence, shifted

from nowcast import maps, plots
from nowcast.grids import beijing_grid
from nowcast.products.palette import RAIN_RATE
from nowcast.schema import crs_of, make_dataset, make_forecast
from nowcast.verification import score_forecast, scores_table

# Southern Finland: the Gulf of Finland coast, the Russian border and radar range edges.
SOUTH = (slice(850, 1226), slice(300, 760))


@pytest.fixture(scope="module")
def radar(shared_data):
    obs = fmi_observations(shared_data, start=12, count=8, window=SOUTH)
    return obs, {"advected": shifted(obs, 1, 4), "persistence": persistence(obs, 1, 4)}


def _rgb(path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    return (image[..., :3] * 255).round().astype(int)


def _share_of(image: np.ndarray, color: str) -> float:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return float(np.mean(np.all(np.abs(image - rgb) <= 3, axis=-1)))


@pytest.mark.realdata
def test_forecast_panels_on_the_radar_projection(radar, tmp_path):
    obs, forecasts = radar
    projection = maps.map_projection(obs)
    assert pyproj.CRS(projection.to_wkt()).equals(crs_of(obs))
    assert maps.natural_earth_available()
    path = maps.plot_forecast_panels(forecasts, obs, tmp_path / "panels.png", leads_min=(5, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panels.png"]   # no temporary file left
    image = _rgb(path)
    assert image.shape[0] > image.shape[1] * 0.6        # 3 rows x 2 columns of maps and a colour bar
    assert sum(_share_of(image, c) for c in RAIN_RATE.colors) > 0.02     # rain in the standard scale
    assert _share_of(image, maps.NO_DATA_COLOR) > 0.005   # outside radar range in grey
    assert np.mean(np.all(image < 90, axis=-1)) > 0.002   # coastlines, borders, text


@pytest.mark.realdata
def test_contingency_map_colours_hits_misses_and_false_alarms(radar, tmp_path):
    obs, forecasts = radar
    path = maps.plot_contingency_map(forecasts, obs, tmp_path / "contingency.png", threshold=1.0, max_leads=2)
    image = _rgb(path)
    for category in (maps.HIT, maps.MISS, maps.FALSE_ALARM):
        assert _share_of(image, maps.CATEGORY_COLORS[category]) > 0.001, maps.CATEGORY_NAMES[category]


def test_missing_natural_earth_draws_without_coastlines_and_warns_once(tmp_path, monkeypatch, caplog):
    import cartopy

    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", tmp_path / "nothing")
    monkeypatch.setitem(cartopy.config, "data_dir", tmp_path / "nothing")
    monkeypatch.setattr(maps, "_warned_no_natural_earth", False)
    assert not maps.natural_earth_available()
    obs = flows()
    with caplog.at_level(logging.WARNING, logger="nowcast.maps"):
        maps.plot_flow_map(obs, tmp_path / "a.png")   # 3 maps; a download attempt would raise
        maps.plot_flow_map(obs, tmp_path / "b.png")
    warnings = [r for r in caplog.records if r.name == "nowcast.maps" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Natural Earth" in warnings[0].getMessage()
    assert (tmp_path / "b.png").stat().st_size > 10_000


def flows(n: int = 6) -> xr.Dataset:
    grid = beijing_grid(16, 2000.0)
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:16, 0:16]
    centre = 400.0 * np.exp(-((rows - 8) ** 2 + (cols - 7) ** 2) / 20.0)      # busy city centre
    data = rng.poisson(centre + 5.0, (n, 2, 16, 16)).astype("f4")
    return make_dataset(data, times=pd.date_range("2015-03-02 07:00", periods=n, freq="30min"), x=grid.x,
                        y=grid.y, crs=grid.crs, variable="crowd_flow", source="synthetic TaxiBJ-like flows",
                        time_step="30min")


def test_flow_map_and_error_map_for_traffic(tmp_path):
    obs = flows()
    flow_png = maps.plot_flow_map(obs, tmp_path / "flow.png", time=obs["time"].values[2])
    assert _rgb(flow_png).shape[1] > 1000
    field = obs["crowd_flow"].values[2:5].copy()
    field[:, 1, 3, 12] += 300.0                  # outflow badly wrong in one cell
    forecast = make_forecast(field, like=obs, reference_time=obs["time"].values[1], source="tau")
    error_png = maps.plot_error_map({"tau": forecast}, obs, tmp_path / "error.png")
    image = _rgb(error_png)
    darkest = np.array([0, 0, 4])               # magma_r at its maximum: the bad cell
    assert np.mean(np.all(np.abs(image - darkest) <= 12, axis=-1)) > 0.0005


def test_scores_against_lead_time_compare_methods(tmp_path):
    obs = flows(8)
    tables = []
    for name, scale in (("tau", 1.05), ("persistence", 1.0)):
        data = obs["crowd_flow"].values[2:6] * scale if name == "tau" else np.repeat(
            obs["crowd_flow"].values[1:2], 4, axis=0)
        forecast = make_forecast(data, like=obs, reference_time=obs["time"].values[1], source=name)
        tables.append(scores_table(score_forecast(forecast, obs)))
    table = pd.concat(tables)
    path = plots.plot_scores_vs_lead(table, tmp_path / "rmse.png", metric="rmse")
    assert path.exists()
    assert plots.is_baseline("persistence") and not plots.is_baseline("tau")
    with pytest.raises(ValueError, match="no 'csi' scores"):
        plots.plot_scores_vs_lead(table, tmp_path / "csi.png", metric="csi")


@pytest.mark.realdata
def test_spectra_rank_histograms_and_reliability_plots(radar, tmp_path):
    obs, _ = radar
    members = np.stack([obs["rainrate"].values[k:k + 3] for k in range(3)], axis=1)
    ensemble = make_forecast(members, like=obs, reference_time=obs["time"].values[3], source="lagged",
                             realization=[0, 1, 2])
    scores = score_forecast(ensemble, obs, thresholds=(1.0,), fss_scales_km=()).compute()
    stacked = xr.concat([scores], dim=pd.Index(["lagged"], name="method"))
    assert plots.plot_power_spectra(stacked, tmp_path / "psd.png").exists()
    assert plots.plot_rank_histograms(stacked, tmp_path / "rank.png").exists()
    assert plots.plot_reliability(stacked, tmp_path / "rel.png", threshold=1.0).exists()


@pytest.mark.realdata
def test_animated_loop(radar, tmp_path):
    from PIL import Image

    obs, forecasts = radar
    path = maps.animate_forecast(forecasts["advected"], tmp_path / "loop.gif", obs=obs)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
    mp4 = maps.animate_forecast(forecasts["advected"], tmp_path / "loop.mp4")
    header = mp4.read_bytes()[:64]
    assert b"ftyp" in header and mp4.stat().st_size > 5_000
    with pytest.raises(ValueError, match="gif or .mp4"):
        maps.animate_forecast(forecasts["advected"], tmp_path / "loop.avi")


def test_plot_frames_for_radar_and_traffic(tmp_path):
    from PIL import Image

    from nowcast.synthetic import synthetic_radar, synthetic_traffic

    radar = synthetic_radar(6, size=48, seed=2)
    path = maps.plot_frames(radar, tmp_path / "radar.png", max_frames=3)
    with Image.open(path) as image:
        width, height = image.size
    assert width > 2 * height  # three map panels side by side
    traffic = synthetic_traffic(1, size=16, seed=2)
    assert maps.plot_frames(traffic, tmp_path / "traffic.png", times=traffic["time"].values[[16, 34]],
                            flow="outflow").stat().st_size > 10_000


def test_even_lead_spacing():
    from nowcast.synthetic import synthetic_radar

    obs = synthetic_radar(3, size=16, seed=1)
    forecast = make_forecast(np.zeros((12, 16, 16), "f4"), like=obs, reference_time=obs["time"].values[-1],
                             source="zero")
    assert maps._pick_leads(forecast, None, 4) == [2, 5, 8, 11]               # +15, +30, +45, +60 min
    assert maps._pick_leads(forecast.isel(time=slice(0, 6)), None, 4) == [1, 3, 5]
    assert maps.natural_earth_scale(obs) == "50m"


def test_map_command_draws_archive_frames_and_forecast_files(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from nowcast import archive
    from nowcast.baselines import lagrangian_extrapolation
    from nowcast.baselines import persistence as eulerian
    from nowcast.cli import app
    from nowcast.products import write_cf_netcdf
    from nowcast.synthetic import synthetic_radar

    obs = synthetic_radar(10, size=48, seed=2)
    store = tmp_path / "radar.zarr"
    archive.write(obs, store)
    cli = CliRunner()
    done = cli.invoke(app, ["map", str(store), "--out", str(tmp_path / "frames.png"), "--frames", "2"])
    assert done.exit_code == 0, done.output
    loop = cli.invoke(app, ["map", str(store), "--out", str(tmp_path / "frames.gif"), "--frames", "3"])
    assert loop.exit_code == 0, loop.output
    with Image.open(tmp_path / "frames.gif") as gif:
        assert gif.n_frames == 3
    at = obs["time"].values[6]
    files = [write_cf_netcdf(method(obs, 3, at=at), tmp_path / f"{method.__name__}.nc")
             for method in (eulerian, lagrangian_extrapolation)]
    panels = cli.invoke(app, ["map", *map(str, files), "--obs", str(store), "--out", str(tmp_path / "fc.png")])
    assert panels.exit_code == 0, panels.output
    assert "persistence, lagrangian and the observations" in panels.output
    assert _rgb(tmp_path / "fc.png").shape[0] > 400
    early = write_cf_netcdf(eulerian(obs, 3, at=obs["time"].values[4]), tmp_path / "early.nc")
    mixed = cli.invoke(app, ["map", str(files[1]), str(early), "--out", str(tmp_path / "x.png")])
    assert mixed.exit_code == 1 and "different times" in mixed.output


def test_lat_lon_grids_are_drawn_on_an_equal_area_map(tmp_path):
    import cartopy.crs as ccrs

    grid_x, grid_y = np.arange(-100.0, -90.0, 0.1), np.arange(40.0, 35.0, -0.1)
    obs = make_dataset(np.ones((2, grid_y.size, grid_x.size), "f4"),
                       times=pd.date_range("2024-06-01", periods=2, freq="10min"), x=grid_x, y=grid_y,
                       crs="EPSG:4326", source="MRMS-like", time_step="10min")
    assert isinstance(maps.map_projection(obs), ccrs.LambertAzimuthalEqualArea)
    assert maps.plot_frames(obs, tmp_path / "mrms.png").stat().st_size > 10_000
