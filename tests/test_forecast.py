"""Forecasting from checkpoints: data model, input selection, missing inputs, tiling, baselines,
traffic, all-or-nothing products and the command line (tiny presets, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nowcast import archive, models
from nowcast import forecast as fc
from nowcast.checkpoint import file_hash
from nowcast.cli import app
from nowcast.products import open_cf_netcdf
from nowcast.schema import crs_of, validate
from nowcast.synthetic import synthetic_radar, synthetic_traffic
from nowcast.training import train
from nowcast.transforms import DBR, Identity
from nowcast.windows import tile_origins

pytestmark = pytest.mark.xdist_group("forecast")
ISSUE = pd.Timestamp("2024-06-01T16:00")  # frame 48 of the synthetic archive


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("forecast") / "radar.zarr"
    archive.write(synthetic_radar(72, size=64, seed=8, start="2024-06-01T12:00"), path)
    return path


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    result = train(store, "stlight-tiny", tmp_path_factory.mktemp("runs") / "stlight", epochs=1,
                   steps_per_epoch=2, batch_size=2, patch=32, fractions=(0.8, 0.2, 0.0), progress=False)
    return result.run_dir


def test_forecast_is_georeferenced_and_uses_the_frames_ending_at_the_issue_time(store, run):
    obs = archive.open_archive(store)
    whole = max(obs.sizes["y"], obs.sizes["x"])  # one tile: the whole domain, as computed below
    out = fc.forecast(obs, run, at=ISSUE, n_leads=6, tile=whole)  # 6 > t_out = 4: the model rolls out
    validate(out, forecast=True)
    step = pd.Timedelta("5min")
    assert pd.Timestamp(out["forecast_reference_time"].values) == ISSUE
    assert list(pd.DatetimeIndex(out["time"].values)) == [ISSUE + k * step for k in range(1, 7)]
    assert crs_of(out).equals(crs_of(obs))
    np.testing.assert_array_equal(out["x"].values, obs["x"].values)
    assert out.attrs["source"] == "stlight-tiny"
    assert out.attrs["checkpoint_hash"] == file_hash(run / "best.pt")
    model, transform, meta = fc.load_model(run)
    assert isinstance(transform, DBR) and meta["checkpoint"] == str(run / "best.pt")
    frames = obs["rainrate"].sel(time=slice(ISSUE - 7 * step, ISSUE)).values
    with torch.no_grad():
        expected = model(torch.from_numpy(transform.forward(frames))[None, :, None], t_out=6)
    expected = transform.inverse(expected[0, :, 0].numpy())
    np.testing.assert_allclose(out["rainrate"].values, expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(out["rainrate"].values).all() and out["rainrate"].values.min() >= 0


def test_missing_or_empty_input_frames_are_named(store, run):
    obs = archive.open_archive(store)
    gappy = obs.drop_sel(time=[ISSUE - pd.Timedelta("10min"), ISSUE - pd.Timedelta("25min")])
    with pytest.raises(fc.MissingInputError, match="lack 2 time") as err:
        fc.forecast(gappy, run, at=ISSUE)
    assert "2024-06-01 15:50" in str(err.value) and "2024-06-01 15:35" in str(err.value)
    assert list(err.value.missing) == [ISSUE - pd.Timedelta("25min"), ISSUE - pd.Timedelta("10min")]
    blank = obs.load()
    blank["rainrate"].loc[{"time": ISSUE}] = np.nan
    with pytest.raises(fc.MissingInputError, match="lack 1 time.*2024-06-01 16:00"):
        fc.forecast(blank, run, at=ISSUE)
    with pytest.raises(fc.MissingInputError, match="lack 1 time.*2024-06-01 16:00"):  # not 15:55's window
        fc.forecast(obs.drop_sel(time=ISSUE), run, at=ISSUE + pd.Timedelta("3min"))


def test_issue_time_is_the_last_step_at_or_before_the_request(store, run):
    obs = archive.open_archive(store)
    out = fc.forecast(obs, run, at="2024-06-01T16:04:59", n_leads=1)
    assert pd.Timestamp(out["forecast_reference_time"].values) == ISSUE
    assert pd.Timestamp(fc.forecast(obs, run, n_leads=1)["forecast_reference_time"].values) == \
        pd.Timestamp(obs["time"].values[-1])
    times = pd.date_range("2024-01-01", periods=4, freq="10min")
    assert fc.issue_time(times, "2024-01-01T00:25", pd.Timedelta("10min")) == times[2]
    assert fc.issue_time(times, "2024-01-01T01:00", pd.Timedelta("10min")) == pd.Timestamp("2024-01-01T01:00")
    assert fc.issue_time(times, "2023-12-31", pd.Timedelta("10min")) == pd.Timestamp("2023-12-31")


class Pointwise(nn.Module):
    """Each output cell depends on the same cell of the inputs only: tiling must not change it."""

    t_in, t_out, preset, family, size_multiple = 3, 2, "pointwise", "pointwise", 8

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x, t_out=None):
        self.shapes.append(tuple(x.shape))
        t_out = t_out or self.t_out
        trend = x[:, -1:] - x[:, -2:-1]
        return torch.cat([x[:, -1:] + (k + 1) * trend + 0.1 * x.mean(1, keepdim=True) for k in range(t_out)], 1)


def test_tiles_blend_to_the_whole_domain_result(monkeypatch):
    obs = synthetic_radar(3, size=72, seed=1).isel(x=slice(0, 70))  # 72 × 70: padded to 72 × 72
    model = Pointwise()
    bundle = (model, Identity(), {"preset": "pointwise"})
    whole = fc.forecast(obs, bundle, n_leads=3)
    assert model.shapes == [(1, 3, 1, 72, 72)]
    tiled = fc.forecast(obs, bundle, n_leads=3, tile=32, overlap=8)
    assert model.shapes[1] == (8, 3, 1, 32, 32) and len(model.shapes) == 3  # 3 × 3 tiles, 8 per batch
    np.testing.assert_allclose(tiled["rainrate"].values, whole["rainrate"].values, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(fc, "MAX_WHOLE_CELLS", 1000)  # large domains are tiled by default
    model.shapes.clear()
    fc.forecast(obs, bundle, n_leads=1)
    assert model.shapes[0][-2:] == (72, 72) and len(model.shapes) == 1  # no training patch: 256 ≥ domain
    fc.forecast(obs, (model, Identity(), {"data": {"patch": [48, 48]}}), n_leads=1)
    assert model.shapes[-1][-2:] == (48, 48)


def test_tiled_forecast_is_the_blend_of_tiles_of_the_padded_input_band_by_band(tmp_path, monkeypatch):
    """Rows come out as soon as they are final, the input is scaled a row of tiles at a time, and large
    leads go through scratch files: the values are those of blending every tile of the whole input."""
    torch.manual_seed(0)
    model = models.build("stlight-tiny").eval()
    obs = synthetic_radar(model.t_in, size=72, seed=5).isel(y=slice(0, 70), x=slice(0, 65)).load()
    obs["rainrate"][:, :6, :] = np.nan
    frames = obs["rainrate"].values[:, None]
    x = models.pad_to_multiple(torch.from_numpy(DBR().forward(frames))[None], model.size_multiple)
    total, norm = torch.zeros((3, 1) + x.shape[-2:]), torch.zeros(x.shape[-2:])
    weight = torch.outer(fc._taper(32, 8), fc._taper(32, 8))
    origins = [(y0, x0) for y0 in tile_origins(72, 32, 24) for x0 in tile_origins(68, 32, 24)]
    with torch.no_grad():
        for i in range(0, len(origins), fc.TILE_BATCH):
            batch = origins[i:i + fc.TILE_BATCH]
            out = model(torch.cat([x[..., y0:y0 + 32, x0:x0 + 32] for y0, x0 in batch]), t_out=3)
            for (y0, x0), y in zip(batch, out):
                total[..., y0:y0 + 32, x0:x0 + 32] += y * weight
                norm[y0:y0 + 32, x0:x0 + 32] += weight
    expected = DBR().inverse((total / norm)[..., :70, :65].numpy())
    expected[:, :, :6] = np.nan
    bundle = (model, DBR(), {"preset": "stlight-tiny"})
    np.testing.assert_array_equal(fc.predict(model, DBR(), frames, 3, tile=32, overlap=8), expected)
    small = fc.forecast(obs, bundle, n_leads=3, tile=32, overlap=8, scratch=tmp_path)["rainrate"]
    assert small.chunks is None and not list(tmp_path.iterdir())  # under SCRATCH_BYTES: in memory
    monkeypatch.setattr(fc, "SCRATCH_BYTES", 0)
    streamed = fc.forecast(obs, bundle, n_leads=3, tile=32, overlap=8, scratch=tmp_path)["rainrate"]
    assert streamed.chunks[0] == (1, 1, 1) and len(list(tmp_path.glob("*.f4"))) == 1  # read a lead at a time
    np.testing.assert_array_equal(streamed.values, expected[:, 0])
    np.testing.assert_array_equal(small.values, expected[:, 0])


@pytest.mark.parametrize("name", ["tau-tiny", "stlight-tiny", "mslstm-tiny"])
@pytest.mark.parametrize("height,width,padded", [(12, 8, (12, 8)), (14, 10, (16, 12))])
def test_forecast_pads_only_to_the_model_multiple(name, height, width, padded):
    """On a small grid the forecast is the model on the scaled input, edge-padded only as the model needs."""
    torch.manual_seed(0)
    model = models.build(name).eval()
    assert model.size_multiple == 4
    obs = synthetic_radar(model.t_in, size=24, seed=3).isel(y=slice(0, height), x=slice(0, width))
    shapes = []
    model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[-2:])))
    out = fc.forecast(obs, (model, DBR(), {"preset": name}), n_leads=2)
    assert shapes[0] == padded
    x = torch.from_numpy(DBR().forward(obs["rainrate"].values))[None, :, None]
    x = torch.nn.functional.pad(x[0], (0, padded[1] - width, 0, padded[0] - height), mode="replicate")[None]
    with torch.no_grad():
        direct = model(x, t_out=2)[0, :, 0, :height, :width].numpy()
    np.testing.assert_allclose(out["rainrate"].values, DBR().inverse(direct), rtol=1e-5, atol=1e-6)


def test_forecast_is_nan_where_any_input_frame_has_no_coverage():
    torch.manual_seed(0)
    model = models.build("stlight-tiny").eval()
    obs = synthetic_radar(model.t_in, size=16, seed=2).load()
    obs["rainrate"][:, :, :3] = np.nan  # outside the radar's range in every frame
    obs["rainrate"][2, 5, 7] = np.nan  # one cell missing in one earlier frame
    out = fc.forecast(obs, (model, DBR(), {"preset": "stlight-tiny"}), n_leads=3)["rainrate"].values
    gaps = np.zeros((16, 16), bool)
    gaps[:, :3] = gaps[5, 7] = True
    assert np.isnan(out[:, gaps]).all() and np.isfinite(out[:, ~gaps]).all()


def test_forecast_with_baselines_share_the_issue_time(store, run):
    obs = archive.open_archive(store)
    out = fc.forecast_with_baselines(obs, [run], at=ISSUE, n_leads=4)
    assert list(out) == ["stlight-tiny", "persistence", "lagrangian"]
    for ds in out.values():
        assert pd.Timestamp(ds["forecast_reference_time"].values) == ISSUE and ds.sizes["time"] == 4
    np.testing.assert_array_equal(out["persistence"]["rainrate"].values[2], obs["rainrate"].sel(time=ISSUE).values)
    assert list(fc.forecast_with_baselines(obs, [run], at=ISSUE, n_leads=2, include_baselines=False)) == \
        ["stlight-tiny"]


def test_traffic_forecast_keeps_the_flow_dim(tmp_path):
    flows = synthetic_traffic(3, seed=1)
    store = tmp_path / "traffic.zarr"
    archive.write(flows, store)
    result = train(store, "stlight-tiny", tmp_path / "run", t_in=4, t_out=2, epochs=1, steps_per_epoch=1,
                   batch_size=2, fractions=(0.8, 0.2, 0.0), progress=False)
    obs = archive.open_archive(store)
    out = fc.forecast_with_baselines(obs, [result.run_dir], n_leads=3)
    assert list(out) == ["stlight-tiny", "persistence"]  # 3 days: no historical average yet
    model_fc = out["stlight-tiny"]
    assert model_fc["crowd_flow"].dims == ("time", "flow", "y", "x") and model_fc["crowd_flow"].shape == (3, 2, 32, 32)
    assert float(model_fc["crowd_flow"].min()) >= 0.0
    assert fc.load_model(result.run_dir)[0].in_channels == 2


def test_products_are_written_all_or_nothing(store, run, tmp_path, monkeypatch):
    obs = archive.open_archive(store)
    forecasts = fc.forecast_with_baselines(obs, [run], at=ISSUE, n_leads=2)
    import nowcast.products.geotiff as geotiff

    real = geotiff.write_geotiffs

    def failing(forecast, out_dir, **kw):
        if forecast.attrs["source"] == "lagrangian":
            raise OSError("disk full")
        return real(forecast, out_dir, **kw)

    monkeypatch.setattr(geotiff, "write_geotiffs", failing)
    with pytest.raises(OSError, match="disk full"):
        fc.write_products(forecasts, tmp_path / "issue")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary folder left
    monkeypatch.setattr(geotiff, "write_geotiffs", real)
    folder = fc.write_products(forecasts, tmp_path / "issue", extra={"note": "test"})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["note"] == "test" and set(manifest["methods"]) == set(forecasts)
    assert manifest["methods"]["stlight-tiny"]["checkpoint_hash"] == file_hash(run / "best.pt")
    assert all((folder / p).exists() for m in manifest["methods"].values() for p in [m["netcdf"], *m["geotiffs"]])


def test_cli_train_resume_forecast(store, tmp_path):
    cli = CliRunner()
    run_dir, out = tmp_path / "run", tmp_path / "products"
    args = ["train", str(store), "--model", "stlight-tiny", "--out", str(run_dir), "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "2", "--patch", "32", "--no-progress"]
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = cli.invoke(app, args)
    assert again.exit_code == 1 and "--resume" in again.output and "Traceback" not in again.output
    resumed = cli.invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0 and "1 epochs" in resumed.output
    issue = ["forecast", str(store), "-c", str(run_dir), "--out", str(out), "--at", "2024-06-01T16:00",
             "--leads", "3"]
    done = cli.invoke(app, issue)
    assert done.exit_code == 0, done.output
    folder = out / "20240601T1600Z"
    assert sorted(p.name for p in folder.glob("*.nc")) == ["lagrangian.nc", "persistence.nc", "stlight-tiny.nc"]
    assert len(list((folder / "geotiff" / "stlight-tiny").glob("*.tif"))) == 3
    repeat = cli.invoke(app, issue)
    assert repeat.exit_code == 1 and "already exist" in repeat.output
    assert cli.invoke(app, issue + ["--overwrite", "--no-baselines", "--format", "netcdf"]).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "stlight-tiny.nc"]
    # The model's 8-frame window reaches back before the archive; the baselines' 3 frames do not.
    early = cli.invoke(app, ["forecast", str(store), "-c", str(run_dir), "--out", str(out), "--at",
                             "2024-06-01T12:20"])
    assert early.exit_code == 0 and "Traceback" not in early.output
    assert "stlight-tiny" in early.output and "11:50" in early.output
    assert sorted(p.name for p in (out / "20240601T1220Z").glob("*.nc")) == ["lagrangian.nc", "persistence.nc"]
    manifest = json.loads((out / "20240601T1220Z" / "manifest.json").read_text())
    assert "11:50" in manifest["skipped"]["stlight-tiny"]
    too_early = cli.invoke(app, ["forecast", str(store), "--out", str(out), "--at", "2024-06-01T11:00"])
    assert too_early.exit_code == 1 and "11:00" in too_early.output and not (out / "20240601T1100Z").exists()


def test_cli_forecast_without_checkpoint_issues_the_baselines_at_many_times(store, tmp_path):
    out = tmp_path / "products"
    done = CliRunner().invoke(app, ["forecast", str(store), "--out", str(out), "--start", "2024-06-01T15:00",
                                    "--end", "2024-06-01T16:00", "--every", "30min", "--at", "2024-06-01T16:10",
                                    "--leads", "2", "--format", "netcdf", "--webmap"])
    assert done.exit_code == 0, done.output
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["20240601T1500Z", "20240601T1530Z", "20240601T1600Z", "20240601T1610Z"]
    for folder in folders:
        assert sorted(p.name for p in (out / folder).glob("*.nc")) == ["lagrangian.nc", "persistence.nc"]
    webmap = out / "20240601T1600Z" / "webmap" / "persistence"
    assert len(list(webmap.glob("*.png"))) == 3 and len(list(webmap.glob("*.prj"))) == 2  # 2 leads + legend


def test_issue_nowcasts_loads_each_model_once(store, run, tmp_path, monkeypatch):
    loads = []
    real = fc.load_model
    monkeypatch.setattr(fc, "load_model", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    issues = fc.issue_nowcasts(store, [run], tmp_path, at=["2024-06-01T12:20", ISSUE, ISSUE], n_leads=2)
    assert len(loads) == 1
    assert [i.reference_time for i in issues] == [pd.Timestamp("2024-06-01T12:20"), ISSUE]
    assert issues[0].methods == ["persistence", "lagrangian"] and list(issues[0].skipped) == ["stlight-tiny"]
    assert issues[1].methods == ["stlight-tiny", "persistence", "lagrangian"] and not issues[1].skipped
    again = fc.issue_nowcasts(store, [run], tmp_path, at=[ISSUE], n_leads=2)
    assert not again[0].issued and "already exist" in again[0].reason


def test_issue_nowcasts_plans_from_metadata_and_loads_weights_only_to_compute(store, run, tmp_path, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    early = fc.issue_nowcasts(store, [run], tmp_path, at=["2024-06-01T12:20"])  # the model's window is incomplete
    assert loads == [] and list(early[0].skipped) == ["stlight-tiny"]
    assert early[0].methods == ["persistence", "lagrangian"]
    assert json.loads((early[0].folder / "manifest.json").read_text())["methods"]["persistence"]
    issued = fc.issue_nowcasts(store, [run], tmp_path, at=[ISSUE])
    assert len(loads) == 1 and issued[0].methods == ["stlight-tiny", "persistence", "lagrangian"]
    assert open_cf_netcdf(issued[0].folder / "stlight-tiny.nc").sizes["time"] == 4  # t_out, from the metadata
    again = fc.issue_nowcasts(store, [run], tmp_path, at=[ISSUE])
    assert len(loads) == 1 and "already exist" in again[0].reason


def test_issue_nowcasts_opens_the_archive_once(store, run, tmp_path, monkeypatch):
    import xarray as xr
    import zarr

    opened = []
    real_group, real_zarr = zarr.open_group, xr.open_zarr
    monkeypatch.setattr(zarr, "open_group", lambda *a, **kw: opened.append("group") or real_group(*a, **kw))
    monkeypatch.setattr(xr, "open_zarr", lambda *a, **kw: opened.append("xarray") or real_zarr(*a, **kw))
    issues = fc.issue_nowcasts(store, [run], tmp_path, at=[ISSUE - pd.Timedelta("5min"), ISSUE], n_leads=2)
    assert [len(i.methods) for i in issues] == [3, 3]
    assert opened == ["xarray", "group"]  # xarray opens the Zarr group once, and only that


def test_a_model_forecast_imports_no_pysteps_and_the_baselines_no_torch(store, run, tmp_path):
    """Neither library is imported where it is not used (bench/forecast.py times pysteps' import)."""
    for models, baselines, absent, written in (([str(run)], False, "pysteps", ["stlight-tiny.nc"]),
                                               ([], True, "torch", ["lagrangian.nc", "persistence.nc"])):
        out = tmp_path / absent
        code = ("import sys; from nowcast import forecast as fc; "
                f"fc.issue_nowcasts({str(store)!r}, {models!r}, {str(out)!r}, n_leads=1, "
                f"include_baselines={baselines}, formats=['netcdf']); assert {absent!r} not in sys.modules")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert sorted(p.name for p in out.glob("*/*.nc")) == written
