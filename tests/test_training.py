"""Training: run folder and safe checkpoints, bit-exact resume after a kill, early stopping,
scheduled sampling, and DDP under torchrun (tiny presets, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr

from nowcast import archive
from nowcast.checkpoint import CheckpointError, load_checkpoint
from nowcast.forecast import load_model
from nowcast.synthetic import synthetic_radar
from nowcast.training import _scheduler, _Trainer, cosine_lr, dihedral, train
from nowcast.transforms import DBR

pytestmark = pytest.mark.xdist_group("training")
NOWCAST = Path(sys.executable).with_name("nowcast")
TORCHRUN = Path(sys.executable).with_name("torchrun")
# The same settings in-process and on the command line (CLI defaults: split 0.8/0.1/0.1, patience 10).
RUN = dict(epochs=3, steps_per_epoch=4, batch_size=4, patch=32, seed=5)
CLI_RUN = ["--epochs", "3", "--steps-per-epoch", "4", "--batch-size", "4", "--patch", "32", "--seed", "5"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "radar.zarr"
    archive.write(synthetic_radar(120, size=64, seed=4), path)
    return path


@pytest.fixture(scope="module")
def full_run(store, tmp_path_factory):
    """tau-tiny trained for 3 epochs without interruption."""
    return train(store, "tau-tiny", tmp_path_factory.mktemp("runs") / "full", progress=False, **RUN)


def test_run_folder_and_checkpoint(full_run, store):
    run = full_run.run_dir
    assert sorted(p.name for p in run.iterdir()) == ["best.meta.json", "best.pt", "config.json", "last.meta.json",
                                                    "last.pt", "metrics.csv", "metrics.json"]  # no temporary files
    state = load_checkpoint(run / "last.pt")  # torch.load(weights_only=True) inside
    assert state["epoch"] == 3 and state["step"] == 12
    assert state["model"]["name"] == "tau-tiny" and state["model"]["config"]["t_in"] == 8
    assert state["transform"] == DBR().to_dict()
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert state["scheduler"]["total_steps"] == 12  # OneCycle over the whole run, stepped per batch
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["data"]["variable"] == "rainrate" and state["data"]["patch"] == [32, 32]
    assert state["config"]["optimizer"] == "adam" and state["config"]["schedule"] == "onecycle"
    assert state["config"]["grad_clip"] is None  # no reference clips gradients
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["samples"] == 16 for h in history)
    assert all(np.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (run / "metrics.csv").read_text().count("\n") == 4
    best = min(history, key=lambda h: h["val_loss"])
    assert load_checkpoint(run / "best.pt")["epoch"] == best["epoch"]
    with pytest.raises(FileExistsError, match="resume"):
        train(store, "tau-tiny", run, progress=False, **RUN)


def test_cosine_schedule_is_openstls_per_epoch():
    cfg = SimpleNamespace(schedule="cosine", lr=5e-4, epochs=10, warmup_epochs=5)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = _scheduler(cfg, optimizer, total_steps=30, steps_per_epoch=3)
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    per_epoch = lrs[::3]
    assert lrs == [lr for lr in per_epoch for _ in range(3)]  # constant within an epoch
    assert per_epoch == pytest.approx([cosine_lr(e, 10, 5e-4, 5) for e in range(10)])
    assert per_epoch[0] == pytest.approx(1e-5) and per_epoch[4] < 5e-4  # warm-up from 1e-5
    assert per_epoch[5] == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6))  # the cosine counts from epoch 0
    assert cosine_lr(10, 10, 5e-4, 5) == pytest.approx(1e-6)  # floor


def test_checkpoint_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a nowcast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "foreign.pt").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(tmp_path / "cut.pt")


def test_killed_run_resumes_to_identical_losses(full_run, store, tmp_path):
    """SIGKILL `nowcast train` after its first epoch, resume: every epoch's losses match bit for bit."""
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same arithmetic as this process
    proc = subprocess.Popen([str(NOWCAST), "train", str(store), "--model", "tau-tiny", "--out", str(run),
                             "--no-progress", *CLI_RUN], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "metrics.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    done = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 3
    resumed = train(store, "tau-tiny", run, resume=True, progress=False)
    assert _same_history(resumed.history, full_run.history)
    with pytest.raises(ValueError, match="epochs=5"):
        train(store, "tau-tiny", run, resume=True, epochs=5, progress=False)


HISTORY_KEYS = ("epoch", "step", "samples", "train_loss", "val_loss", "val_mse", "lr")


def _same_history(a: list[dict], b: list[dict]) -> bool:
    return [{k: h[k] for k in HISTORY_KEYS} for h in a] == [{k: h[k] for k in HISTORY_KEYS} for h in b]


def test_step_checkpoint_resumes_mid_epoch(full_run, store, tmp_path, monkeypatch):
    """Crash in epoch 2 after the step-6 checkpoint (checkpoint_every=3): resuming it matches bit for bit."""
    real_step = _Trainer._step

    def crashing_step(self, x, y):
        if self.step == 6:
            raise KeyboardInterrupt("killed")
        return real_step(self, x, y)

    run = tmp_path / "steps"
    monkeypatch.setattr(_Trainer, "_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(store, "tau-tiny", run, checkpoint_every=3, progress=False, **RUN)
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"], state["progress"]["batch"]) == (1, 6, 2)
    monkeypatch.setattr(_Trainer, "_step", real_step)
    resumed = train(store, "tau-tiny", run, resume=True, progress=False)
    assert _same_history(resumed.history, full_run.history)


def test_ema_checkpoints_the_average_and_resumes_to_identical_losses(store, tmp_path, monkeypatch):
    """With ``ema``, best.pt/last.pt hold the weights' moving average (the trained weights beside it for
    resuming), and a run killed after its step-6 checkpoint resumes to the same losses and average."""
    settings = {**RUN, "epochs": 2, "ema": 0.9}
    full = train(store, "tau-tiny", tmp_path / "full", progress=False, **settings)
    state = load_checkpoint(full.last_checkpoint)
    assert state["config"]["ema"] == 0.9 and int(state["ema"]["n_averaged"]) == 8
    average, trained = state["model"]["state"], state["ema"]["trained"]
    assert not all(torch.equal(average[k], trained[k]) for k in trained)
    forecaster = load_model(full.last_checkpoint)[0].state_dict()
    assert all(torch.equal(forecaster[k].cpu(), average[k]) for k in average)  # forecasts use the average
    latest = load_checkpoint(train(store, "tau-tiny", tmp_path / "latest", progress=False,
                                   **{**settings, "ema": 1e-9}).last_checkpoint)
    assert all(torch.allclose(latest["model"]["state"][k].float(), latest["ema"]["trained"][k].float())
               for k in trained)  # no memory: the average is the last step's weights

    real_step = _Trainer._step

    def crashing_step(self, *batch):
        if self.step == 6:
            raise KeyboardInterrupt("killed")
        return real_step(self, *batch)

    monkeypatch.setattr(_Trainer, "_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(store, "tau-tiny", tmp_path / "killed", checkpoint_every=3, progress=False, **settings)
    monkeypatch.setattr(_Trainer, "_step", real_step)
    resumed = train(store, "tau-tiny", tmp_path / "killed", resume=True, progress=False)
    assert _same_history(resumed.history, full.history)
    again = load_checkpoint(resumed.last_checkpoint)["model"]["state"]
    assert all(torch.equal(again[k], average[k]) for k in average)
    with pytest.raises(ValueError, match="decay per step"):
        train(store, "tau-tiny", tmp_path / "bad", progress=False, **{**settings, "ema": 1.0})


def test_time_budget_stops_cleanly_and_resumes(full_run, store, tmp_path):
    """`--time-budget 0` stops after the first step with best.pt and a step checkpoint; resume finishes the run."""
    from typer.testing import CliRunner

    from nowcast.cli import app

    run = tmp_path / "budget"
    done = CliRunner().invoke(app, ["train", str(store), "--model", "tau-tiny", "--out", str(run), "--no-progress",
                                    "--time-budget", "0", "--checkpoint-every", "2", *CLI_RUN])
    assert done.exit_code == 0, done.output
    assert "time budget spent" in done.output
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"], state["progress"]["batch"]) == (0, 1, 1)
    assert load_checkpoint(run / "best.pt")["step"] == 1  # validated before stopping: the best so far
    resumed = train(store, "tau-tiny", run, resume=True, progress=False)
    assert not resumed.stopped_by_budget and _same_history(resumed.history, full_run.history)


def test_validation_split_on_a_small_archive(tmp_path):
    """Too few frames to validate: a clear error naming what to pass; two events split whole."""
    short = synthetic_radar(20, size=16, seed=2)
    with pytest.raises(ValueError, match=r"no validation window.*--split 1,0,0"):
        train(short, "tau-tiny", tmp_path / "short", epochs=1, steps_per_epoch=1, batch_size=2,
              fractions=(0.8, 0.2, 0.0), progress=False)
    assert train(short, "tau-tiny", tmp_path / "none", epochs=1, steps_per_epoch=1, batch_size=2,
                 fractions=(1.0, 0.0, 0.0), progress=False).history[0]["samples"] == 2
    gappy = xr.concat([short, synthetic_radar(6, size=16, seed=3, start="2024-06-02")], "time")
    with pytest.raises(ValueError, match="--block event"):  # the last 12 frames span the gap
        train(gappy, "tau-tiny", tmp_path / "gappy", epochs=1, steps_per_epoch=1, batch_size=2,
              fractions=(0.8, 0.2, 0.0), progress=False)
    events = xr.concat([short, synthetic_radar(20, size=16, seed=3, start="2024-06-02")], "time")
    result = train(events, "tau-tiny", tmp_path / "events", epochs=1, steps_per_epoch=1, batch_size=2,
                   fractions=(0.5, 0.5, 0.0), block="event", progress=False)
    assert load_checkpoint(result.last_checkpoint)["data"]["samples"] == {"train": 9, "val": 9, "test": 0}


def test_early_stopping_on_validation_loss(store, tmp_path, monkeypatch):
    losses = iter([0.5, 0.4, 0.45, 0.41, 0.3, 0.2])
    monkeypatch.setattr(_Trainer, "_validate", lambda self: (next(losses), 0.0))
    obs = archive.open_archive(store)  # an in-memory (dask) dataset works as well as a path
    result = train(obs, "stlight-tiny", tmp_path / "early", epochs=6, steps_per_epoch=1, batch_size=2,
                   patch=32, patience=2, amp="bf16", progress=False)
    assert result.stopped_early and [h["val_loss"] for h in result.history] == [0.5, 0.4, 0.45, 0.41]
    assert load_checkpoint(result.best_checkpoint)["epoch"] == 2


def test_mslstm_trains_with_scheduled_sampling(store, tmp_path, monkeypatch):
    from nowcast import models

    ratios, calls = [], []
    real_ratio, real_forward = models.scheduled_sampling_ratio, models.MSLSTM.forward

    def ratio(step, total):
        ratios.append(real_ratio(step, total))
        return ratios[-1]

    def forward(self, x, t_out=None, *, target=None, sampling_ratio=0.0, input_phase=False):
        calls.append((self.training, target is not None, input_phase))
        return real_forward(self, x, t_out, target=target, sampling_ratio=sampling_ratio, input_phase=input_phase)

    monkeypatch.setattr(models, "scheduled_sampling_ratio", ratio)
    monkeypatch.setattr(models.MSLSTM, "forward", forward)
    result = train(store, "mslstm-tiny", tmp_path / "ms", epochs=2, steps_per_epoch=2, batch_size=2, patch=16,
                   t_in=4, t_out=2, fractions=(0.95, 0.05, 0.0), progress=False)
    assert ratios == [1.0, 0.75, 0.5, 0.25]  # linear from 1 to 0 over the 4 steps
    assert [(given, phase) for training, given, phase in calls if training] == [(True, True)] * 4
    assert not any(given or phase for training, given, phase in calls if not training)  # validation: forecast only
    assert len(calls) > 4
    config = load_checkpoint(result.last_checkpoint)["config"]
    assert config["schedule"] == "constant" and config["input_phase_loss"]


def test_mslstm_loss_covers_the_input_phase_unless_restricted(store, tmp_path, monkeypatch):
    """The reference (MS-RNN) loss is over all S - 1 outputs; input_phase_loss=False keeps the forecast frames."""
    from nowcast import models

    shapes = []
    real_loss = models.l1_l2_per_frame

    def loss(pred, target):
        shapes.append((pred.shape[1], target.shape[1]))
        return real_loss(pred, target)

    monkeypatch.setitem(models.registry.LOSSES, "mslstm", loss)
    common = dict(epochs=1, steps_per_epoch=1, batch_size=2, patch=16, t_in=4, t_out=2, val_samples=1,
                  fractions=(0.95, 0.05, 0.0), progress=False)
    train(store, "mslstm-tiny", tmp_path / "all", **common)
    train(store, "mslstm-tiny", tmp_path / "forecast", input_phase_loss=False, **common)
    assert shapes == [(5, 5), (2, 2), (2, 2), (2, 2)]  # training then validation, per run
    with pytest.raises(ValueError, match="MS-LSTM"):
        train(store, "tau-tiny", tmp_path / "tau", input_phase_loss=True, **common)


def test_loss_option_replaces_the_paper_loss_and_is_stored(store, tmp_path, monkeypatch):
    from nowcast import models

    calls = []
    real_mae = models.losses.mae

    def mae(pred, target):
        calls.append(pred.shape[1])
        return real_mae(pred, target)

    monkeypatch.setattr(models.losses, "mae", mae)
    common = dict(epochs=1, steps_per_epoch=2, batch_size=2, patch=16, t_in=4, t_out=2, val_samples=1,
                  fractions=(0.95, 0.05, 0.0), progress=False)
    result = train(store, "stlight-tiny", tmp_path / "mae", loss="mae", **common)
    assert calls == [2, 2, 2]  # two training steps, one validation batch
    assert load_checkpoint(result.last_checkpoint)["config"]["loss"] == "mae"
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        train(store, "stlight-tiny", tmp_path / "l3", loss="l3", **common)
    run = train(store, "stlight-tiny", tmp_path / "q", loss="quantile", quantile=0.6, **common)
    config = load_checkpoint(run.last_checkpoint)["config"]
    assert (config["loss"], config["quantile"]) == ("quantile", 0.6)
    with pytest.raises(ValueError, match="needs a quantile"):
        train(store, "stlight-tiny", tmp_path / "q0", loss="quantile", **common)


def test_dihedral_gives_the_eight_symmetries_of_the_square():
    frame = torch.arange(9.0).reshape(1, 3, 3)
    images = {tuple(dihedral(frame, k).flatten().tolist()) for k in range(8)}
    assert len(images) == 8  # all distinct: the group D4
    assert torch.equal(dihedral(frame, 4 | 1 | 0), torch.rot90(frame, -1, (-2, -1)))  # transpose, flip x: quarter turn
    assert torch.equal(dihedral(frame, 3), torch.rot90(frame, 2, (-2, -1)))  # both flips: half turn
    wide = torch.arange(6.0).reshape(2, 3)
    assert all(dihedral(wide, k).shape == (2, 3) for k in range(4))


def test_dihedral_augmentation_transforms_inputs_and_targets_alike(store, tmp_path, monkeypatch):
    seen = []
    real_step = _Trainer._step

    def step(self, x, y):
        seen.append((x.clone(), y.clone()))
        return real_step(self, x, y)

    monkeypatch.setattr(_Trainer, "_step", step)
    common = dict(epochs=1, steps_per_epoch=6, batch_size=2, patch=16, t_in=4, t_out=2, val_samples=1,
                  fractions=(0.95, 0.05, 0.0), progress=False, seed=3)
    train(store, "stlight-tiny", tmp_path / "plain", **common)
    plain, seen[:] = list(seen), []
    result = train(store, "stlight-tiny", tmp_path / "dihedral", augment="dihedral", **common)
    assert load_checkpoint(result.last_checkpoint)["config"]["augment"] == "dihedral"
    # Same samples (the draw comes after the loader's), each batch in one symmetry applied to x and y together.
    ks = []
    for (x0, y0), (x1, y1) in zip(plain, seen, strict=True):
        k = [k for k in range(8) if torch.equal(dihedral(x0, k), x1) and torch.equal(dihedral(y0, k), y1)]
        assert k, "inputs and targets not in one symmetry of the plain batch"
        ks.append(k[0])
    assert len(set(ks)) > 1  # drawn at random, not one fixed symmetry
    with pytest.raises(ValueError, match="unknown augmentation 'rot'"):
        train(store, "stlight-tiny", tmp_path / "rot", augment="rot", **common)


def test_domain_off_the_size_multiple_is_padded_as_in_forecasting(tmp_path):
    obs = synthetic_radar(64, size=16, seed=1).isel(y=slice(0, 14), x=slice(0, 10))
    result = train(obs, "tau-tiny", tmp_path / "odd", epochs=1, steps_per_epoch=1, batch_size=2,
                   fractions=(0.8, 0.2, 0.0), progress=False)
    assert load_checkpoint(result.last_checkpoint)["data"]["patch"] == [14, 10]
    assert np.isfinite(result.history[0]["val_loss"])


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_torchrun_two_processes_use_ddp(store, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--no-python", str(NOWCAST), "train", str(store),
           "--model", "stlight-tiny", "--out", str(run), "--epochs", "1", "--steps-per-epoch", "3",
           "--batch-size", "2", "--patch", "32", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((run / "metrics.json").read_text())
    assert history[0]["samples"] == 2 * 3 * 2  # two ranks × 3 steps × batch 2
    assert load_checkpoint(run / "last.pt")["step"] == 3
    shutil.rmtree(run)
