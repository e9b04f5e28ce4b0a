"""Ingest into archives: every real source, bad input skipped and reported, idempotent re-runs, resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from nowcast import archive
from nowcast.cli import app
from nowcast.ingest import ingest
from nowcast.sources import get_source
from test_sources import make_bad

pytestmark = pytest.mark.realdata

# A few consecutive files per source (folders relative to shared/data), with fast reader options.
CASES = {
    "fmi": ("radar/fmi/pgm/20160928", 3, {"zr": "source"}),
    "fmi-geotiff": ("radar/fmi/geotiff/20160928", 2, {"coarsen": 4, "zr": "source"}),
    "mch": ("radar/mch/20150515", 3, {}),
    "knmi": ("radar/KNMI/2010/08", 3, {}),
    "bom": ("radar/bom/prcp-cscn/2/2018/06/16", 3, {}),
    "odim": ("radar/OPERA/20180824", 2, {}),
    "mrms": ("radar/mrms/2019/06/10", 2, {"coarsen": 4}),
}


def first_files(shared_data: Path, folder: str, n: int, source: str) -> list[Path]:
    files = sorted(p for p in (shared_data / folder).iterdir() if get_source(source).matches(p))
    return files[:n]


def knmi_folder(shared_data: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dst)) for p in first_files(shared_data, "radar/KNMI/2010/08", n, "knmi")]


def snapshot(store: Path) -> list:
    return sorted((str(p.relative_to(store)), p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file())


@pytest.mark.parametrize("source", sorted(CASES))
def test_each_real_source_ingests_to_a_valid_archive(shared_data, tmp_path, source):
    folder, n, options = CASES[source]
    files = first_files(shared_data, folder, n, source)
    store = tmp_path / f"{source}.zarr"
    report = ingest(source, files, store, **options)
    assert report.ok and report.frames_added == n and len(report.ingested) == n
    ds = archive.open_archive(store)  # validates the data model
    expected = sorted(get_source(source).time_of(p) for p in files)
    assert list(pd.DatetimeIndex(ds["time"].values)) == expected
    assert "rainrate" in ds and ds["rainrate"].attrs["units"] == "mm h-1"
    assert np.isfinite(ds["rainrate"].values).any()


def test_bad_files_are_reported_and_skipped_and_the_rest_ingested(shared_data, tmp_path):
    good = knmi_folder(shared_data, tmp_path / "in", 7)
    truncated = make_bad(good[1], good[1], "truncated")
    flipped = make_bad(good[2], good[2], "flipped")
    empty = make_bad(good[3], good[3], "empty")
    with h5py.File(good[4], "r+") as f:  # the grid moved 10 km east
        f["geographic"].attrs["geo_column_offset"] = np.array([10.0], dtype="f4")
    with h5py.File(good[5], "r+") as f:  # another projection (true latitude 52N)
        proj = f["geographic/map_projection"]
        proj.attrs["projection_proj4_params"] = proj.attrs["projection_proj4_params"].replace(b"lat_ts=60.0",
                                                                                              b"lat_ts=52.0")
    unreadable = tmp_path / "in" / "RAD_NL25_RAP_5min_201008270000.h5"
    unreadable.write_text("this is not HDF5")
    report = ingest("knmi", [tmp_path / "in"], tmp_path / "a.zarr")
    reasons = {path.name: reason for path, reason in report.skipped}
    assert set(reasons) == {truncated.name, flipped.name, empty.name, good[4].name, good[5].name, unreadable.name}
    assert "truncated" in reasons[truncated.name] and reasons[empty.name] == "empty file"
    assert "grid bounds" in reasons[good[4].name] and "regrid" in reasons[good[4].name]
    assert "CRS" in reasons[good[5].name]
    assert report.frames_added == 2 and {p.name for p in report.ingested} == {good[0].name, good[6].name}
    ds = archive.open_archive(tmp_path / "a.zarr")
    assert ds.sizes["time"] == 2


def test_rerunning_an_ingest_is_a_no_op(shared_data, tmp_path):
    files = knmi_folder(shared_data, tmp_path / "in", 3)
    store = tmp_path / "a.zarr"
    assert ingest("knmi", files, store).frames_added == 3
    before = snapshot(store)
    again = ingest("knmi", files, store)
    assert again.frames_added == 0 and len(again.unchanged) == 3 and again.ok
    assert snapshot(store) == before


def test_interrupted_ingest_resumes_without_loss(shared_data, tmp_path, monkeypatch):
    files = knmi_folder(shared_data, tmp_path / "in", 6)
    clean = tmp_path / "clean.zarr"
    ingest("knmi", files, clean, batch_frames=2)
    store = tmp_path / "a.zarr"
    calls = {"n": 0}
    original = archive._commit

    def crash_on_second_commit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # second batch written, not committed: the process dies
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "_commit", crash_on_second_commit)
    with pytest.raises(KeyboardInterrupt):
        ingest("knmi", files, store, batch_frames=2)
    monkeypatch.undo()
    interrupted = archive.open_archive(store)  # still readable: the committed first batch
    assert interrupted.sizes["time"] == 2
    report = ingest("knmi", files, store, batch_frames=2)
    assert report.frames_added == 4 and len(report.unchanged) == 2 and report.ok
    xr.testing.assert_identical(archive.open_archive(store).load(), archive.open_archive(clean).load())


def test_late_files_fill_their_slots_and_another_variable_is_refused(shared_data, tmp_path):
    files = first_files(shared_data, "radar/fmi/pgm/20160928", 4, "fmi")
    store, clean = tmp_path / "a.zarr", tmp_path / "clean.zarr"
    ingest("fmi", files[2:], store, zr="source")
    report = ingest("fmi", files[:2], store, zr="source")   # arrive after later frames
    assert report.ok and report.frames_added == 2
    ingest("fmi", files, clean, zr="source")
    xr.testing.assert_identical(archive.open_archive(store).load(), archive.open_archive(clean).load())
    later = first_files(shared_data, "radar/fmi/pgm/20160928", 5, "fmi")[4:]
    report = ingest("fmi", later, store)  # no Z-R: reflectivity into a rain-rate archive
    assert "variable 'reflectivity' differs" in report.skipped[0][1] and "zr" in report.skipped[0][1]


def test_autodetect_skips_files_of_other_sources(shared_data, tmp_path):
    folder = tmp_path / "mixed"
    knmi_folder(shared_data, folder, 2)
    gif = first_files(shared_data, "radar/mch/20150515", 1, "mch")[0]
    shutil.copy(gif, folder)
    report = ingest(None, [folder], tmp_path / "a.zarr")
    assert report.source == "knmi" and report.frames_added == 2
    assert report.skipped == [(folder / gif.name, "is a 'mch' file, not 'knmi'")]


def test_unknown_reader_options_are_a_usage_error(tmp_path):
    with pytest.raises(ValueError, match="takes no option holidays"):
        ingest("knmi", [], tmp_path / "a.zarr", holidays="x.txt")


def test_cli_ingest_sources_and_exit_codes(shared_data, tmp_path):
    runner = CliRunner(env={"COLUMNS": "250"})
    listing = runner.invoke(app, ["sources"])
    assert listing.exit_code == 0 and "mrms" in listing.output and "opera" in listing.output
    files = knmi_folder(shared_data, tmp_path / "in", 3)
    make_bad(files[1], files[1], "truncated")
    result = runner.invoke(app, ["ingest", "knmi", str(tmp_path / "in"), "--out", str(tmp_path / "a.zarr")])
    assert result.exit_code == 1, result.output
    assert "2 frames added" in result.output and files[1].name[:20] in result.output
    detected = runner.invoke(app, ["ingest", str(files[0]), "--out", str(tmp_path / "a.zarr")])
    assert detected.exit_code == 0 and "1 already archived" in detected.output
    unknown = runner.invoke(app, ["ingest", "radolan", str(files[0]), "--out", str(tmp_path / "b.zarr")])
    assert unknown.exit_code == 2 and "unknown source" in unknown.output
    assert not (tmp_path / "b.zarr").exists()


def test_synthetic_sources_ingest_by_name(tmp_path):
    report = ingest("synthetic-traffic", [], tmp_path / "t.zarr", n_days=2, size=8, seed=3)
    assert report.ok and report.frames_added == 96
    assert archive.open_archive(tmp_path / "t.zarr")["crowd_flow"].sizes["flow"] == 2
    again = ingest("synthetic-traffic", [], tmp_path / "t.zarr", n_days=2, size=8, seed=3)
    assert again.frames_added == 0
