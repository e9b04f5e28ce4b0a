"""The main job end to end on a tiny grid: as a Prefect flow and from the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pyproj
import pytest
import rioxarray
import xarray as xr
from typer.testing import CliRunner

from nowcast.products import open_cf_netcdf
from nowcast.schema import crs_of


def _check_products(out, methods):
    for method in methods:
        fc = open_cf_netcdf(out / "forecasts" / f"{method}.nc")
        crs = crs_of(fc)
        wkt = xr.open_dataset(out / "forecasts" / f"{method}.nc")["crs"].attrs["crs_wkt"]
        assert crs.equals(pyproj.CRS.from_wkt(wkt))
        assert fc.sizes["time"] == 12
        tiffs = sorted((out / "forecasts" / "geotiff" / method).glob("*.tif"))
        assert len(tiffs) == 12
        tif = rioxarray.open_rasterio(tiffs[0])
        assert pyproj.CRS.from_user_input(tif.rio.crs.to_wkt()).equals(crs, ignore_axis_order=True)
        assert abs(float(tif.x.min()) - float(fc.x.min())) < 1.0
    table = pd.read_csv(out / "scores.csv")
    assert set(methods) <= set(table.method)
    records = json.loads((out / "scores.json").read_text())
    assert len(records) == len(table)
    for name in ("forecast_vs_observation.png", "csi_vs_lead.png"):
        assert (out / "maps" / name).stat().st_size > 10_000
    return table


def _csi(table, method, lead, threshold=1.0):
    row = table[(table.method == method) & (table.metric == "csi") & (table.lead_min == lead)
                & (table.threshold == threshold)]
    return float(row.value.iloc[0])


@pytest.mark.slow
def test_demo_flow_on_a_tiny_grid(tmp_path, prefect_harness):
    from flows.demo import demo_flow

    result = demo_flow(out_dir=str(tmp_path), size=48, models=["stlight-tiny"], epochs=1, steps_per_epoch=2)
    table = _check_products(tmp_path, ["stlight-tiny", "persistence", "lagrangian"])
    assert set(result["forecasts"]) == {"stlight-tiny", "persistence", "lagrangian"}
    # Synthetic rain moves coherently: following it beats standing still.
    assert _csi(table, "lagrangian", 30) > _csi(table, "persistence", 30)
    assert (tmp_path / "runs" / "stlight-tiny" / "last.pt").exists()
    # The demo's models learn in the Lagrangian frame, from one window cache.
    assert json.loads((tmp_path / "runs" / "stlight-tiny" / "config.json").read_text())["frame"] == "lagrangian"
    assert len(list((tmp_path / "lagrangian-cache").glob("*.zarr"))) == 1


def test_demo_cli_with_baselines_only(tmp_path):
    from nowcast.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--size", "48", "--models", ""])
    assert result.exit_code == 0, result.output
    assert "lagrangian" in result.output and "scores.csv" in result.output
    _check_products(tmp_path, ["persistence", "lagrangian"])
