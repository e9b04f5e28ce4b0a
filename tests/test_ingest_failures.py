"""Every ingest failure gives a clear message naming the input, and no good frame is lost (issue: fault matrix)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from nowcast import archive
from nowcast.cli import app
from nowcast.ingest import ingest

pytestmark = pytest.mark.realdata


def _small_taxi(src: Path, dst: Path, days: int, bad_slot: bool = False) -> Path:
    """The first ``days`` days of a TaxiNYC file (optionally with one impossible slot number)."""
    with h5py.File(src, "r") as f:
        data, dates = f["data"][: 24 * days], f["date"][: 24 * days]
    if bad_slot:
        dates = dates.copy()
        dates[5] = dates[5][:8] + b"99"
    with h5py.File(dst, "w") as f:
        f["data"], f["date"] = data, dates
    return dst


def test_a_bad_slot_in_one_taxibj_file_skips_that_file_only(shared_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _small_taxi(shared_data / "taxinyc" / "NYC13_Taxi_M16x8_T60_InOut.h5",
                       folder / "NYC13_Taxi_M16x8_T60_InOut.h5", 3)
    bad = _small_taxi(shared_data / "taxinyc" / "NYC14_Taxi_M16x8_T60_InOut.h5",
                      folder / "NYC14_Taxi_M16x8_T60_InOut.h5", 3, bad_slot=True)
    report = ingest("taxibj", [folder], tmp_path / "t.zarr")
    assert [p for p, _ in report.skipped] == [bad]
    assert "slot numbers" in report.skipped[0][1]
    assert report.ingested == [good] and report.frames_added > 60
    assert archive.times(tmp_path / "t.zarr").min().year == 2013


def test_a_folder_without_files_of_the_source_is_an_error_naming_it(shared_data, tmp_path):
    runner = CliRunner()
    fmi = shared_data / "radar" / "fmi" / "pgm" / "20160928"
    result = runner.invoke(app, ["ingest", "knmi", str(fmi), "--out", str(tmp_path / "a.zarr")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no knmi files" in text and "20160928" in text
    assert not (tmp_path / "a.zarr").exists()


def test_logs_that_are_not_a_terminal_keep_whole_file_paths(shared_data, tmp_path):
    """CliRunner output is not a terminal: the skipped file's full path must appear unbroken."""
    folder = tmp_path / ("a-rather-long-folder-name-for-radar-files-" * 3)
    folder.mkdir()
    files = sorted((shared_data / "radar" / "KNMI" / "2010" / "08").glob("*.h5"))[:2]
    for path in files:
        shutil.copy(path, folder)
    broken = folder / files[1].name
    broken.write_bytes(broken.read_bytes()[:1000])
    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["ingest", "knmi", str(folder), "--out",
                                                           str(tmp_path / "a.zarr")])
    assert result.exit_code == 1
    assert str(broken) in result.output


@pytest.mark.parametrize("resolution", ["-2000", "0", "0.5"])
def test_regrid_refuses_impossible_resolutions_before_working(shared_data, tmp_path, resolution):
    store = tmp_path / "a.zarr"
    files = sorted((shared_data / "radar" / "KNMI" / "2010" / "08").glob("*.h5"))[:1]
    assert ingest("knmi", files, store).ok
    result = CliRunner().invoke(app, ["regrid", str(store), "--crs", "EPSG:3035", "--resolution", resolution,
                                      "--out", str(tmp_path / "b.zarr")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "resolution" in text and "Traceback" not in result.output
    assert not (tmp_path / "b.zarr").exists()


def test_forecast_into_an_unwritable_place_fails_first_in_one_line(tmp_path):
    """Checked before any model is loaded or field computed; the CLI says it in one line, exit 2."""
    import subprocess
    import sys

    from nowcast.synthetic import synthetic_radar

    store = tmp_path / "a.zarr"
    archive.write(synthetic_radar(6, size=32), store)
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run([str(Path(sys.executable).parent / "nowcast"), "forecast", str(store), "--out",
                           str(blocker / "out")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and f"{blocker / 'out'}" in " ".join(done.stderr.split())
