"""NetCDF/HDF5 under concurrency: threaded BoM ingest, threaded product reads and writes, native crashes in decoders."""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nowcast import archive
from nowcast.decoding import DecoderCrash, ProcessDecoder
from nowcast.ingest import ingest
from nowcast.sources import SOURCES, get_source

pytestmark = pytest.mark.realdata


def bom_files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "radar" / "bom").rglob("*.nc"))
    assert len(files) >= 60
    return files


def test_bom_ingest_with_two_threads_is_stable_and_complete(shared_data, tmp_path):
    """The 61 shared BoM files, 2 decoding threads, 3 times: every frame, every time (it segfaulted 3/3)."""
    files = bom_files(shared_data)
    expected = sorted(get_source("bom").time_of(p) for p in files)
    for attempt in range(3):
        store = tmp_path / f"bom{attempt}.zarr"
        report = ingest("bom", files, store, workers=2)
        assert report.ok, report.summary()
        assert report.frames_added == len(files)
        assert list(archive.times(store)) == expected


def test_process_route_reports_a_crashing_decoder_and_keeps_the_rest(shared_data, tmp_path, monkeypatch):
    """A decoder that segfaults on one file kills only its worker: that file is named, the others are archived."""
    good = bom_files(shared_data)[:5]
    crash = tmp_path / f"{good[2].stem.replace('.prcp', '_crash.prcp')}.nc"
    shutil.copy(good[2], crash)
    files = [good[0], good[1], crash, good[3], good[4]]
    crashing = dataclasses.replace(SOURCES["bom"], name="bom-crashing",
                                   reader="crashing_reader:open_crashing_bom", name_pattern=r"\.prcp-c\w+\.nc$")
    monkeypatch.setitem(SOURCES, "bom-crashing", crashing)
    report = ingest("bom-crashing", files, tmp_path / "a.zarr", workers=2, processes=True)
    assert [path for path, _ in report.skipped] == [crash]
    assert "decoder process died" in report.skipped[0][1]
    assert report.frames_added == 4
    times = archive.times(tmp_path / "a.zarr")
    assert list(times) == sorted(get_source("bom").time_of(p) for p in files if p != crash)


def test_process_decoder_results_match_threads(shared_data):
    files = bom_files(shared_data)[:4]
    with ProcessDecoder(2) as decode:
        by_process = decode.map("bom", files, {})
        again = decode.map("bom", files[:1], {})  # the pool is reused across batches
    for path, ds in zip(files, by_process):
        direct = get_source("bom").open(path)
        np.testing.assert_array_equal(ds["rainrate"].values, direct["rainrate"].values)
    assert again[0]["time"].values[0] == by_process[0]["time"].values[0]


def test_decoder_crash_is_a_picklable_source_error(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(DecoderCrash(tmp_path / "x.nc")))
    assert isinstance(err, DecoderCrash) and err.path == tmp_path / "x.nc" and "x.nc" in str(err)


def test_forecast_files_read_and_written_from_threads(shared_data, tmp_path):
    """20 CF-NetCDF products written by 2 threads while 2 others read them back lazily (dask threads)."""
    from nowcast.products import open_cf_netcdf, write_cf_netcdf
    from nowcast.schema import make_forecast

    obs = get_source("bom").open(bom_files(shared_data)[0], coarsen=4)
    rng = np.random.default_rng(0)
    fields = [rng.gamma(1.0, 2.0, (3,) + obs["rainrate"].shape[1:]).astype("f4") for _ in range(20)]

    def write(i):
        fc = make_forecast(fields[i], like=obs, reference_time=obs["time"].values[0], source=f"m{i}")
        return write_cf_netcdf(fc, tmp_path / f"f{i:02d}.nc")

    def read(path):
        ds = open_cf_netcdf(path, chunks={})
        return ds["rainrate"].mean().compute(scheduler="threads").item()

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(write, range(20)))
    with ThreadPoolExecutor(2) as pool:
        means = list(pool.map(read, paths * 2))
    assert np.allclose(means[:20], [f.mean() for f in fields], rtol=1e-5)
    assert means[:20] == means[20:]


def test_verify_flow_over_many_bom_forecast_files(shared_data, tmp_path, prefect_harness):
    """The verification flow (two files at a time in threads) over 24 BoM forecast files (it segfaulted 1 in 2)."""
    from verification_data import persistence, shifted

    from flows.verify import verify_flow
    from nowcast.products import write_cf_netcdf

    store = tmp_path / "bom.zarr"
    assert ingest("bom", bom_files(shared_data)[:30], store, coarsen=4).ok
    obs = archive.open_archive(store).load()
    files = []
    for issue in range(2, 26, 2):
        files.append(write_cf_netcdf(persistence(obs, issue, 3), tmp_path / f"persistence_{issue}.nc"))
        files.append(write_cf_netcdf(shifted(obs, issue, 3, source="shifted"), tmp_path / f"shifted_{issue}.nc"))
    outputs = verify_flow([str(f) for f in files], str(store), str(tmp_path / "verification"),
                          thresholds=[0.5], animate=False)
    assert sorted(outputs["methods"]) == ["persistence", "shifted"]
    scores = xr.open_dataset(outputs["scores_nc"], decode_timedelta=True)
    assert scores.attrs["cases_persistence"] == 12 and scores.attrs["cases_shifted"] == 12
