"""Regridding: exact where it must be, georeference-preserving across CRSs, archives and CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from typer.testing import CliRunner

from nowcast import archive
from nowcast.cli import app
from nowcast.grids import Grid, radar_grid
from nowcast.ingest import ingest
from nowcast.regrid import regrid, regrid_archive, target_grid
from nowcast.schema import crs_of, make_dataset, validate
from nowcast.sources import get_reader

FMI = "radar/fmi/pgm/20160928/201609281600_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
FMI_TIFF = "radar/fmi/geotiff/20160928/201609281600_FINUTM.tif"
KNMI = "radar/KNMI/2010/08"


def field(grid: Grid, values: np.ndarray, n: int = 2) -> xr.Dataset:
    data = np.repeat(values[None].astype("f4"), n, axis=0)
    return make_dataset(data, times=pd.date_range("2024-06-01", periods=n, freq="5min"), x=grid.x, y=grid.y,
                        crs=grid.crs, source="test", time_step="5min")


def test_same_grid_is_identity_and_no_data_stays_no_data():
    grid = radar_grid(32)
    values = np.random.default_rng(0).gamma(0.5, 2.0, grid.shape)
    values[:4, :6] = np.nan
    ds = field(grid, values)
    out = regrid(ds, grid, "nearest")
    validate(out)
    np.testing.assert_array_equal(out["rainrate"].values, ds["rainrate"].values)
    assert "regridded_from" in out.attrs and out.attrs["time_step"] == "PT5M"


def test_bilinear_reproduces_a_linear_field_and_average_keeps_the_mean():
    grid = radar_grid(64)
    xx, yy = np.meshgrid(grid.x, grid.y)
    ramp = (xx - grid.x[0]) / 1000.0 + 2 * (yy - grid.y[-1]) / 1000.0
    ds = field(grid, ramp, n=1)
    left, bottom, right, top = grid.bounds
    inner = Grid.from_bounds(grid.crs, left + 10_250, bottom + 10_250, right - 9_750, top - 9_750, 500.0)
    out = regrid(ds, inner, "bilinear")["rainrate"].values[0]
    ix, iy = np.meshgrid(inner.x, inner.y)
    np.testing.assert_allclose(out, (ix - grid.x[0]) / 1000.0 + 2 * (iy - grid.y[-1]) / 1000.0, atol=1e-3)
    coarse = Grid.from_bounds(grid.crs, left, bottom, right, top, 4000.0)
    averaged = regrid(ds, coarse, "average")["rainrate"].values[0]
    assert averaged.mean() == pytest.approx(ramp.mean(), rel=1e-5)


def test_a_point_keeps_its_latitude_and_longitude_across_projections():
    grid = radar_grid(128)
    values = np.zeros(grid.shape)
    values[40, 77] = 100.0
    ds = field(grid, values, n=1)
    lon, lat = float(ds["lon"][40, 77]), float(ds["lat"][40, 77])
    laea = target_grid(grid, "EPSG:3035", 1000.0)
    out = regrid(ds, laea, "nearest")
    row, col = np.unravel_index(np.nanargmax(out["rainrate"].values[0]), laea.shape)
    distance = pyproj.Geod(ellps="WGS84").inv(lon, lat, float(out["lon"][row, col]), float(out["lat"][row, col]))[2]
    assert distance < 1500 and crs_of(out).to_epsg() == 3035


@pytest.mark.realdata
def test_fmi_geotiff_regridded_onto_the_pgm_grid_matches_the_pgm(shared_data):
    """Two independent georeferences of one scene (EPSG:3067 GeoTIFF, FMI stereographic PGM) agree
    to within one 1-km cell: the fields correlate best with no shift."""
    pgm = get_reader("fmi")(shared_data / FMI)
    tiff = get_reader("fmi-geotiff")(shared_data / FMI_TIFF, coarsen=4)
    on_pgm = regrid(tiff, Grid.of(pgm), "average")["reflectivity"].values[0]
    ref = pgm["reflectivity"].values[0]

    def corr(shift):
        moved = np.roll(on_pgm, shift, axis=(0, 1))
        ok = np.isfinite(ref) & np.isfinite(moved) & ((ref > 10) | (moved > 10))
        return np.corrcoef(ref[ok], moved[ok])[0, 1]

    best = corr((0, 0))
    assert best > 0.9
    assert all(best > corr(shift) for shift in ((0, 1), (1, 0), (0, -1), (-1, 0)))


@pytest.mark.realdata
def test_regrid_archive_and_cli_are_idempotent(shared_data, tmp_path):
    files = sorted((shared_data / KNMI).glob("*.h5"))[:3]
    source = tmp_path / "knmi.zarr"
    ingest("knmi", files, source)
    grid = target_grid(Grid.of(archive.open_archive(source)), "EPSG:3035", 2000.0)
    assert regrid_archive(source, tmp_path / "laea.zarr", grid, batch_frames=2) == 3
    assert regrid_archive(source, tmp_path / "laea.zarr", grid) == 0
    out = archive.open_archive(tmp_path / "laea.zarr")
    assert crs_of(out).to_epsg() == 3035 and out.sizes["time"] == 3
    left, bottom, right, top = grid.bounds
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["regrid", str(source), "--out", str(tmp_path / "cli.zarr"), "--crs", "EPSG:3035",
                                 "--resolution", "2000", "--bounds", str(left), str(bottom), str(right), str(top)])
    assert result.exit_code == 0, result.output
    cli = archive.open_archive(tmp_path / "cli.zarr")
    np.testing.assert_array_equal(cli["rainrate"].values, out["rainrate"].values)
    like = runner.invoke(app, ["regrid", str(source), "--out", str(tmp_path / "like.zarr"), "--like",
                               str(tmp_path / "cli.zarr"), "--method", "nearest"])
    assert like.exit_code == 0 and Grid.of(archive.open_archive(tmp_path / "like.zarr")).same_as(grid) is None
    bad = runner.invoke(app, ["regrid", str(source), "--out", str(tmp_path / "x.zarr"), "--crs", "EPSG:999999",
                              "--resolution", "1000"])
    assert bad.exit_code == 2 and "error" in bad.output
