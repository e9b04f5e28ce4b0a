"""``nowcast verify`` and the Prefect verification flow on real FMI radar (and synthetic radar) in a Zarr archive."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner
from verification_data import fmi_observations, persistence, shifted

from nowcast import archive
from nowcast.cli import app
from nowcast.products import write_cf_netcdf


# 160 x 160 km over the Gulf of Finland coast, in and out of radar range.
WINDOW = (slice(980, 1140), slice(420, 580))


@pytest.fixture(scope="module")
def case(shared_data, tmp_path_factory):
    """An archive of 10 composites and forecast files of two methods, two issue times each."""
    root = tmp_path_factory.mktemp("verify")
    obs = fmi_observations(shared_data, start=14, count=10, window=WINDOW)
    store = root / "archive.zarr"
    archive.write(obs, store)
    files = []
    for issue in (2, 4):
        files.append(write_cf_netcdf(shifted(obs, issue, 5, source="stlight-tiny"), root / f"stlight_{issue}.nc",
                                     checkpoint_hash="0f1e2d3c"))
        # Forecasts written with plain xarray (no CF products layer) are read too.
        plain = persistence(obs, issue, 5)
        plain.to_netcdf(root / f"persistence_{issue}.nc")
        files.append(root / f"persistence_{issue}.nc")
    return root, store, files, obs


@pytest.mark.realdata
def test_verify_writes_table_netcdf_and_report(case, tmp_path):
    root, store, files, _ = case
    out = tmp_path / "verification"
    result = CliRunner().invoke(app, ["verify", *map(str, files), "--obs", str(store), "--out", str(out),
                                      "--data-range", "40", "--openstl"])
    assert result.exit_code == 0, result.output
    assert "stlight-tiny" in result.output and "persistence" in result.output

    table = pd.read_csv(out / "scores.csv")
    assert list(table.columns) == ["method", "lead_min", "metric", "threshold", "scale_km", "value"]
    assert set(table["method"]) == {"stlight-tiny", "persistence"}     # checkpoint note stripped, cases merged
    assert sorted(table["lead_min"].unique()) == [5, 10, 15, 20, 25]
    assert {"csi", "ets", "pod", "far", "hss", "bias", "fss", "mae", "rmse", "me", "corr", "ssim", "psnr",
            "mse_frame", "mae_frame"} <= set(table["metric"])
    csi = table[(table.metric == "csi") & (table.threshold == 1.0)].pivot(index="lead_min", columns="method",
                                                                           values="value")
    assert (csi["stlight-tiny"] > csi["persistence"]).all()              # the near-truth beats persistence
    assert csi["persistence"].is_monotonic_decreasing

    scores = xr.open_dataset(out / "scores.nc", decode_timedelta=True)
    assert scores.attrs["cases_persistence"] == 2 and scores.attrs["cases_stlight-tiny"] == 2
    assert scores["hits"].dims == ("method", "forecast_period", "threshold")
    assert "psd_forecast" in scores and scores["forecast_period"].values[0] == np.timedelta64(5, "m")

    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"figures/categorical_vs_lead.png", "figures/forecast_panels.png", "figures/contingency_map.png",
            "figures/rmse_map.png", "figures/power_spectra.png", "figures/loop_stlight-tiny.gif"} <= set(images)
    assert all((out / image).is_file() for image in images)
    assert "| stlight-tiny | model | 2 |" in report and "| persistence | baseline | 2 |" in report


@pytest.mark.realdata
def test_verify_names_the_bad_input(case, tmp_path):
    root, store, files, obs = case
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(files[0]), "--obs", str(tmp_path / "none.zarr"), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "no such archive" in result.output

    observations = root / "observations.nc"
    obs.to_netcdf(observations)
    result = runner.invoke(app, ["verify", str(observations), "--obs", str(store), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "observations.nc: holds observations, not a forecast" in _text(result)

    elsewhere = shifted(obs.isel(x=slice(0, 100)), 2, 3)
    elsewhere.to_netcdf(root / "elsewhere.nc")
    result = runner.invoke(app, ["verify", str(root / "elsewhere.nc"), "--obs", str(store), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "elsewhere.nc" in _text(result) and "grid" in _text(result)
    assert "Traceback" not in result.output


def _text(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.mark.realdata
def test_verify_flow_on_a_dask_scheduler(case, tmp_path, prefect_harness):
    from distributed import LocalCluster

    from flows.verify import verify_flow

    root, store, files, _ = case
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        outputs = verify_flow([str(f) for f in files[:2]], str(store), str(tmp_path / "flow"),
                              dask_address=cluster.scheduler_address, thresholds=[1.0], animate=False)
        assert cluster.scheduler.task_prefixes     # the archive reads and scores ran on the scheduler
    assert sorted(outputs["methods"]) == ["persistence", "stlight-tiny"]
    table = pd.read_csv(outputs["scores_csv"])
    assert set(table[table.metric == "csi"]["threshold"]) == {1.0}
    assert (tmp_path / "flow" / "report.md").is_file()
    assert outputs["figures"] and all(f.endswith(".png") for f in outputs["figures"])


@pytest.mark.slow
@pytest.mark.parametrize("support", ["common", "own"])
def test_verify_compares_methods_on_the_common_support_of_each_case(tmp_path, support):
    """Lagrangian extrapolation is NaN at the inflow edge: by default every method is scored on its cells."""
    from nowcast.baselines import lagrangian_extrapolation
    from nowcast.baselines import persistence as eulerian
    from nowcast.synthetic import synthetic_radar

    obs = synthetic_radar(16, size=48, seed=3)
    store = tmp_path / "archive.zarr"
    archive.write(obs, store)
    files = []
    for i in (5, 8):
        at = obs["time"].values[i]
        for method in (lagrangian_extrapolation, eulerian):
            files.append(write_cf_netcdf(method(obs, 4, at=at), tmp_path / f"{method.__name__}_{i}.nc"))
    out = tmp_path / support
    args = ["verify", *map(str, files), "--obs", str(store), "--out", str(out), "--no-animate"]
    result = CliRunner().invoke(app, args + ["--support", support])
    assert result.exit_code == 0, result.output
    scores = xr.open_dataset(out / "scores.nc", decode_timedelta=True)
    methods = list(scores["method"].values)
    cells = [scores["n"].isel(method=methods.index(m)).values for m in ("persistence", "lagrangian")]
    if support == "common":
        np.testing.assert_array_equal(*cells)
        assert "common support" in (out / "report.md").read_text()
    else:
        assert (cells[0] > cells[1]).all()
        assert "its own" in (out / "report.md").read_text()
    mean = CliRunner().invoke(app, ["verify", *map(str, files), "--obs", str(store), "--out", str(tmp_path / "m"),
                                    "--no-animate", "--support", support, "--aggregate", "mean"])
    assert mean.exit_code == 0, mean.output
    pooled, averaged = pd.read_csv(out / "scores.csv"), pd.read_csv(tmp_path / "m" / "scores.csv")
    assert len(pooled) == len(averaged) and not np.allclose(pooled["value"], averaged["value"], equal_nan=True)
    assert "averaged over the cases" in (tmp_path / "m" / "report.md").read_text()
    bad = CliRunner().invoke(app, args + ["--aggregate", "median"])
    assert bad.exit_code == 2 and "aggregate" in bad.output
