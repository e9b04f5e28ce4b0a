"""The Lagrangian frame: untrained = Lagrangian extrapolation, the advection pair, the window cache,
checkpoints that carry their frame, and crowd flows refused (tiny presets, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from nowcast import archive, lagrangian, models
from nowcast import forecast as fc
from nowcast.baselines import lagrangian_extrapolation
from nowcast.checkpoint import load_checkpoint
from nowcast.cli import app
from nowcast.products import open_cf_netcdf
from nowcast.synthetic import synthetic_radar, synthetic_traffic
from nowcast.training import dihedral, dihedral_points, train
from nowcast.transforms import DBR
from nowcast.windows import split_datasets

pytestmark = pytest.mark.xdist_group("lagrangian")
ISSUE = pd.Timestamp("2024-06-01T16:00")  # frame 48 of the synthetic archive


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lagrangian") / "radar.zarr"
    archive.write(synthetic_radar(72, size=64, seed=8, start="2024-06-01T12:00"), path)
    return path


def translating(n: int, velocity: tuple[int, int], size: int = 48, seed: int = 0) -> np.ndarray:
    """``n`` frames (mm h-1, all wet) of one smooth field moving ``velocity`` = (columns, rows) cells per step."""
    pad = n * max(abs(v) for v in velocity) + 1
    noise = np.random.default_rng(seed).standard_normal((size + 2 * pad, size + 2 * pad))
    field = 10.0 ** (0.5 + 4.0 * gaussian_filter(noise, 4.0))  # about 0.5 to 20 mm h-1
    vx, vy = velocity
    return np.stack([field[pad - t * vy:pad - t * vy + size, pad - t * vx:pad - t * vx + size]
                     for t in range(n)]).astype("f4")


@pytest.mark.parametrize("name", ["stlight-tiny", "tau-tiny", "mslstm-tiny"])
def test_untrained_lagrangian_model_is_the_lagrangian_extrapolation(name):
    torch.manual_seed(0)
    model = models.build(name, frame="lagrangian").eval()
    obs = synthetic_radar(model.t_in + 2, size=64, seed=3).load()
    obs["rainrate"][:, 40:, :6] = np.nan  # outside the radar's range in every frame
    obs["rainrate"][-1, 20:24, 30:33] = np.nan  # cells missing at the issue time only
    at = obs["time"].values[-1]
    expected = lagrangian_extrapolation(obs, 6, at=at)["rainrate"].values
    bundle = (model, DBR(), {"preset": name})
    for tile in (None, 32):  # whole domain and blended tiles; 6 leads > t_out = 4: rolled out in the frame
        out = fc.forecast(obs, bundle, at=at, n_leads=6, tile=tile)
        assert out.attrs["frame"] == "lagrangian"
        got = out["rainrate"].values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert 0.05 < np.isnan(expected[-1]).mean() < 0.5


def test_to_and_from_issue_time_return_a_rigidly_translating_frame_to_itself():
    t_in, t_out, v = 6, 6, (2, 1)
    frames = translating(t_in + t_out, v)
    velocity = np.stack([np.full(frames.shape[1:], float(c)) for c in v])
    in_frame = lagrangian.to_issue_time(frames, t_in, velocity)
    inner = (slice(2 * t_out, -2 * t_out), slice(2 * t_out, -2 * t_out))  # away from the inflow edges
    for k in range(t_in + t_out):  # in the Lagrangian frame, a rigid translation stands still
        np.testing.assert_allclose(in_frame[k][inner], frames[t_in - 1][inner], rtol=1e-4)
    leads = (slice(None),) + inner
    back = lagrangian.from_issue_time(in_frame[t_in:], velocity)
    np.testing.assert_allclose(back[leads], frames[t_in:][leads], rtol=1e-4)
    assert not np.isnan(in_frame).any()  # advected in from outside: the issue-time value

    # With the motion the project estimates (pysteps Lucas-Kanade), the pair is close, not exact.
    estimated = lagrangian.motion(frames[:t_in])
    np.testing.assert_allclose(np.median(estimated, axis=(1, 2)), v, atol=0.1)
    round_trip = lagrangian.from_issue_time(lagrangian.to_issue_time(frames, t_in, estimated)[t_in:], estimated)
    wider = (slice(None),) + (slice(3 * t_out, -3 * t_out),) * 2  # estimated motion: not quite 2 cells per step
    rel = np.abs(round_trip - frames[t_in:])[wider] / frames[t_in:][wider]
    assert np.isfinite(rel).all() and np.median(rel) < 0.05


def test_training_samples_come_from_the_cache_in_the_lagrangian_frame(store, tmp_path, monkeypatch):
    splits = split_datasets(store, 6, 4, patch=32, fractions=(0.8, 0.2, 0.0))
    raw_x, raw_y = splits.train[5]
    cache = lagrangian.attach(splits, store, tmp_path / "cache", loss="advected")
    start, tile = splits.train.samples[5]
    window = splits.train.read(int(start), int(start) + 10)[:, 0]
    velocity = cache.dataset["motion"].isel(window=cache.index[int(start)]).values
    np.testing.assert_allclose(velocity, lagrangian.motion(window[:6]), rtol=1e-6, atol=1e-6)
    expected = DBR().forward(lagrangian.to_issue_time(window, 6, velocity))
    (y0, x0) = splits.train.tiles[int(tile)]
    x, y = splits.train[5]
    np.testing.assert_allclose(torch.cat([x, y])[:, 0].numpy(), expected[:, y0:y0 + 32, x0:x0 + 32], atol=1e-6)
    np.testing.assert_array_equal(x[-1].numpy(), raw_x[-1].numpy())  # the issue-time frame is not moved
    assert not torch.equal(y, raw_y)
    assert "frames" in cache._memory  # a small cache is read into memory once
    on_disk = lagrangian.WindowCache(cache.path)
    monkeypatch.setattr(lagrangian, "IN_MEMORY_BYTES", 0)  # a big one is read per sample: the same windows
    np.testing.assert_array_equal(on_disk.window(start, slice(y0, y0 + 32), slice(x0, x0 + 32)),
                                  cache.window(start, slice(y0, y0 + 32), slice(x0, x0 + 32)))
    assert not on_disk._memory
    assert splits.val.cache is cache and len(cache.index) == len(np.unique(np.concatenate(
        [splits.train.samples[:, 0], splits.val.samples[:, 0]])))
    # Same archive and settings: the same cache; more frames committed: a new one.
    assert lagrangian.attach(split_datasets(store, 6, 4, patch=32, fractions=(0.8, 0.2, 0.0)), store,
                             tmp_path / "cache").path == cache.path
    more = synthetic_radar(80, size=64, seed=8, start="2024-06-01T12:00")
    bigger = tmp_path / "bigger.zarr"
    archive.write(more.isel(time=slice(0, 72)), bigger)
    first = lagrangian.cache_key(bigger, splits.train, splits.train.starts)
    archive.write(more.isel(time=slice(72, 80)), bigger)
    assert lagrangian.cache_key(bigger, splits.train, splits.train.starts) != first


def test_checkpoint_trained_in_the_lagrangian_frame_forecasts_in_it_unasked(store, tmp_path):
    cli = CliRunner()
    run_dir, out = tmp_path / "run", tmp_path / "products"
    trained = cli.invoke(app, ["train", str(store), "--model", "tau-tiny", "--out", str(run_dir), "--epochs", "1",
                               "--steps-per-epoch", "2", "--batch-size", "2", "--patch", "32", "--split",
                               "0.8,0.2,0", "--frame", "lagrangian", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    state = load_checkpoint(run_dir / "best.pt")
    assert state["config"]["frame"] == "lagrangian" and state["model"]["config"]["frame"] == "lagrangian"
    assert json.loads((run_dir / "config.json").read_text())["frame"] == "lagrangian"
    assert len(list((store.parent / f"{store.name}.lagrangian").glob("*.zarr"))) == 1  # beside the archive

    model, transform, _ = fc.load_model(run_dir)
    assert model.frame == "lagrangian"
    obs = archive.open_archive(store)
    issued = fc.forecast(obs, run_dir, at=ISSUE, n_leads=4)
    inputs = obs["rainrate"].sel(time=slice(ISSUE - 7 * pd.Timedelta("5min"), ISSUE)).values[:, None]
    assert issued.attrs["frame"] == "lagrangian"
    np.testing.assert_allclose(issued["rainrate"].values,
                               lagrangian.predict(model, transform, inputs, 4, tile=32)[:, 0], rtol=1e-5, atol=1e-6)
    eulerian = fc.predict(model, transform, inputs, 4, tile=32)[:, 0]
    assert np.nanmax(np.abs(issued["rainrate"].values - eulerian)) > 0.1

    done = cli.invoke(app, ["forecast", str(store), "-c", str(run_dir), "--out", str(out), "--at",
                            "2024-06-01T16:00", "--leads", "4", "--format", "netcdf"])
    assert done.exit_code == 0, done.output
    product = open_cf_netcdf(out / "20240601T1600Z" / "tau-tiny.nc")
    np.testing.assert_allclose(product["rainrate"].values, issued["rainrate"].values, rtol=1e-5, atol=1e-5)


def test_crowd_flows_refuse_the_lagrangian_frame(tmp_path):
    flows = synthetic_traffic(3, seed=1)
    with pytest.raises(ValueError, match="'crowd_flow' is not advected.*eulerian"):
        train(flows, "stlight-tiny", tmp_path / "run", t_in=4, t_out=2, epochs=1, steps_per_epoch=1,
              batch_size=2, fractions=(0.8, 0.2, 0.0), progress=False, frame="lagrangian")
    assert not (tmp_path / "run").exists()
    store = tmp_path / "traffic.zarr"
    archive.write(flows, store)
    refused = CliRunner().invoke(app, ["train", str(store), "--model", "stlight-tiny", "--out", str(tmp_path / "r"),
                                       "--t-in", "4", "--t-out", "2", "--frame", "lagrangian", "--no-progress"])
    assert refused.exit_code == 1 and "'crowd_flow' is not advected" in " ".join(refused.output.split())
    assert "Traceback" not in refused.output
    model = models.build("stlight-tiny", t_in=4, t_out=2, in_channels=2, frame="lagrangian")
    with pytest.raises(ValueError, match="'crowd_flow' is not advected"):
        fc.forecast(flows, (model, DBR(), {"preset": "stlight-tiny"}), n_leads=2)
    with pytest.raises(ValueError, match="unknown frame 'polar'"):
        models.build("stlight-tiny", frame="polar")


def test_forward_advection_of_network_outputs_is_the_forecasts_own_and_commutes_with_the_symmetries():
    """``lagrangian_loss="observed"`` advects outputs in transformed units with torch; the forecast advects
    rates with scipy (:func:`lagrangian.from_issue_time`): the same values and the same NaN cells."""
    frames = translating(4, (1, 1), size=40)
    rows, cols = np.mgrid[0:40, 0:40]
    velocity = np.stack([0.8 + 0.3 * np.sin(rows / 7.0), -0.6 + 0.4 * cols / 40.0])
    scaler = DBR()
    origin = torch.from_numpy(lagrangian.departures(velocity, 4))[None]
    fields = torch.from_numpy(scaler.forward(frames))[None, :, None]
    moved = lagrangian.advect_forward(fields, origin, fill=torch.full_like(fields, float("nan")))[0, :, 0].numpy()
    expected = lagrangian.from_issue_time(frames, velocity)
    np.testing.assert_array_equal(np.isnan(moved), np.isnan(expected))
    assert 0.02 < np.isnan(expected).mean() < 0.3
    np.testing.assert_allclose(scaler.inverse(np.nan_to_num(moved))[~np.isnan(expected)],
                               expected[~np.isnan(expected)], rtol=1e-4)
    fill = torch.zeros_like(fields)
    for k in range(8):  # a batch augmented by a symmetry of the square advects as the symmetry of the original
        np.testing.assert_allclose(
            lagrangian.advect_forward(dihedral(fields, k), dihedral_points(origin, k), dihedral(fill, k)),
            dihedral(lagrangian.advect_forward(fields, origin, fill), k), atol=1e-6)


def test_observed_loss_scores_the_forecast_as_issued(store, tmp_path):
    """Samples carry the observed targets and the forecast's trajectories; an untrained (zero-residual)
    network, advected forward, is the Lagrangian extrapolation of the tile; training stores the choice."""
    splits = split_datasets(store, 6, 4, patch=32, fractions=(0.8, 0.2, 0.0))
    lagrangian.attach(splits, store, tmp_path / "cache", loss="observed")
    x, y, observed, origin = splits.train[5]
    start, tile = splits.train.samples[5]
    (y0, x0) = splits.train.tiles[int(tile)]
    window = splits.train.read(int(start), int(start) + 10)[:, 0]
    np.testing.assert_allclose(observed[:, 0].numpy(), DBR().forward(window[6:, y0:y0 + 32, x0:x0 + 32]))
    persistence = x[-1:].expand(4, -1, -1, -1)[None]  # what an untrained network returns
    moved = lagrangian.advect_forward(persistence, origin[None], torch.full_like(observed[None], np.nan))[0, :, 0]
    velocity = lagrangian.motion(window[:6])
    expected = lagrangian.from_issue_time(np.repeat(window[5:6, y0:y0 + 32, x0:x0 + 32], 4, 0),
                                          velocity[:, y0:y0 + 32, x0:x0 + 32])
    inside = ~torch.isnan(moved).numpy()
    assert inside[0].mean() > 0.8 and (inside <= ~np.isnan(expected)).all()
    np.testing.assert_allclose(DBR().inverse(moved.numpy()[inside]), expected[inside], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Lagrangian-frame loss"):
        lagrangian.attach(splits, store, tmp_path / "cache", loss="eulerian")

    result = train(store, "tau-tiny", tmp_path / "run", epochs=1, steps_per_epoch=2, batch_size=2, patch=32,
                   t_in=6, t_out=4, fractions=(0.8, 0.2, 0.0), frame="lagrangian", lagrangian_loss="observed",
                   augment="dihedral", frame_cache=tmp_path / "cache", progress=False)
    assert np.isfinite(result.history[-1]["val_loss"])
    assert load_checkpoint(result.best_checkpoint)["config"]["lagrangian_loss"] == "observed"
