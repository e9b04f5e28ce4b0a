"""Prefect flows: forecast (issue, skip when issued or incomplete), train (and resume), and one
scheduled cycle served against a real `prefect server` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from nowcast import archive
from nowcast.checkpoint import load_checkpoint
from nowcast.synthetic import synthetic_radar
from nowcast.training import train

pytestmark = pytest.mark.xdist_group("schedule")
BIN = Path(sys.executable).parent
START = pd.Timestamp("2024-06-01T12:00")
N_FRAMES = 40
NEWEST = START + (N_FRAMES - 1) * pd.Timedelta("5min")


@pytest.fixture(scope="module")
def obs():
    return synthetic_radar(N_FRAMES, size=32, seed=6, start=START)


@pytest.fixture(scope="module")
def store(obs, tmp_path_factory):
    path = tmp_path_factory.mktemp("schedule") / "radar.zarr"
    archive.write(obs, path)
    return path


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    return train(store, "stlight-tiny", tmp_path_factory.mktemp("runs") / "stlight", epochs=1, steps_per_epoch=1,
                 batch_size=2, fractions=(0.8, 0.2, 0.0), progress=False).run_dir


def test_forecast_flow_issues_once_then_skips(prefect_harness, store, run, tmp_path):
    from flows.forecast import forecast_flow

    first = forecast_flow(str(store), [str(run)], str(tmp_path), n_leads=3)
    issue = first["issues"][0]
    assert first["status"] == "issued" and issue["methods"] == ["stlight-tiny", "persistence", "lagrangian"]
    folder = tmp_path / "20240601T1515Z"
    assert issue["folder"] == str(folder) and pd.Timestamp(issue["reference_time"]) == NEWEST
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["flow_run"] and manifest["archive"] == str(store)
    assert len(list(folder.glob("geotiff/*/*.tif"))) == 9
    again = forecast_flow(str(store), [str(run)], str(tmp_path), n_leads=3, return_state=True)
    assert again.name == "Skipped" and "already exist" in again.message
    assert again.result()["status"] == "skipped"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_forecast_flow_names_what_an_incomplete_window_skips(prefect_harness, obs, run, tmp_path):
    from flows.forecast import forecast_flow

    gappy = tmp_path / "gappy.zarr"
    archive.write(obs.drop_isel(time=[N_FRAMES - 3]), gappy)  # the newest window lacks 15:05
    result = forecast_flow(str(gappy), [str(run)], str(tmp_path / "out"), at=[str(NEWEST), "2024-06-01T15:00"],
                           formats=["netcdf", "webmap"])
    newest, earlier = sorted(result["issues"], key=lambda i: i["reference_time"], reverse=True)
    assert newest["methods"] == ["persistence"] and sorted(newest["skipped"]) == ["lagrangian", "stlight-tiny"]
    reason = newest["skipped"]["stlight-tiny"]
    assert "2024-06-01 15:05" in reason and "newest complete window ends at 2024-06-01 15:00" in reason
    assert earlier["methods"] == ["stlight-tiny", "persistence", "lagrangian"]
    assert list((tmp_path / "out" / "20240601T1500Z" / "webmap" / "stlight-tiny").glob("*.prj"))
    still = forecast_flow(str(gappy), [str(run)], str(tmp_path / "out"), at=[str(NEWEST)], return_state=True)
    assert still.name == "Skipped" and "still cannot be issued" in still.message
    # The late frame arrives: the next run fills the window and issues every method at that time.
    archive.write(obs.isel(time=[N_FRAMES - 3]), gappy)
    filled = forecast_flow(str(gappy), [str(run)], str(tmp_path / "out"), at=[str(NEWEST)], return_state=True)
    assert filled.name == "Completed"
    assert filled.result()["issues"][0]["methods"] == ["stlight-tiny", "persistence", "lagrangian"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_train_flow_trains_then_resumes(prefect_harness, store, tmp_path):
    from flows.train import train_flow

    result = train_flow(str(store), "stlight-tiny", str(tmp_path / "run"), epochs=1, steps_per_epoch=1,
                        batch_size=2, patch=16)
    assert len(result["history"]) == 1 and load_checkpoint(result["best_checkpoint"])["epoch"] == 1
    resumed = train_flow(str(store), "stlight-tiny", str(tmp_path / "run"), resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in result["history"]]


def test_serve_needs_a_server():
    from flows.deploy import require_server
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(RuntimeError, match="prefect server start"):
            require_server(timeout=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started (server workers, flow-run subprocesses), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_one_scheduled_cycle_on_a_loopback_server(store, run, tmp_path):
    """`prefect server start` on loopback + `nowcast serve --interval 5`: a scheduled run issues products."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_RUNNER_POLL_FREQUENCY="1", OMP_NUM_THREADS="1")
    out = tmp_path / "products"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs["server"], stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not become healthy in 120 s")
        serve = subprocess.Popen([str(BIN / "nowcast"), "serve", str(store), "-c", str(run), "--out", str(out),
                                  "--interval", "5", "--leads", "2"], env={**env, "PREFECT_API_URL": api},
                                 cwd=tmp_path, stdout=logs["serve"], stderr=subprocess.STDOUT,
                                 start_new_session=True)
        manifest = out / "20240601T1515Z" / "manifest.json"
        deadline = time.monotonic() + 150
        while not manifest.exists() and time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert manifest.exists(), (tmp_path / "serve.log").read_text()[-3000:]
        assert set(json.loads(manifest.read_text())["methods"]) == {"stlight-tiny", "persistence", "lagrangian"}
        issued = []
        while not issued and time.monotonic() < deadline + 30:  # the run completes just after its products
            completed = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
            runs = httpx.post(f"{api}/flow_runs/filter", json=completed, timeout=10).json()
            issued = [r for r in runs if r["deployment_id"]]
            time.sleep(0.5)
        assert issued and all(r["auto_scheduled"] for r in issued)  # made by the scheduler, not by hand
    finally:
        for proc in (serve, server):
            if proc is not None:
                _stop(proc)
        for f in logs.values():
            f.close()
    assert not list(out.glob(".*"))  # no partial folder left behind
