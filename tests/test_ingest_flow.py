"""The Prefect ingest flow on a 2-worker local Dask cluster: same archive as ``ingest``, bad files skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import distributed
import pytest
import xarray as xr

from nowcast import archive
from nowcast.ingest import ingest
from test_sources import make_bad

pytestmark = pytest.mark.realdata


def test_ingest_flow_on_a_two_worker_dask_cluster(prefect_harness, shared_data, tmp_path):
    """Worker processes decode and write their frames; a bad file (unpicklable errors crashed this) is named."""
    from flows.ingest import ingest_flow

    folder = tmp_path / "in"
    folder.mkdir()
    files = [Path(shutil.copy(p, folder)) for p in sorted((shared_data / "radar/KNMI/2010/08").glob("*.h5"))[:5]]
    bad = make_bad(folder / files[2].name, folder / files[2].name, "flipped")
    state = ingest_flow("knmi", [str(folder)], str(tmp_path / "flow.zarr"), n_workers=2, return_state=True)
    report = state.result()
    assert report.frames_added == 4 and [p.name for p, _ in report.skipped] == [bad.name]
    assert "filter returned failure" in report.skipped[0][1] or "unreadable" in report.skipped[0][1]
    assert state.is_completed() and "1 skipped" in state.message
    reference = ingest("knmi", [folder], tmp_path / "plain.zarr")
    xr.testing.assert_identical(archive.open_archive(tmp_path / "flow.zarr").load(),
                                archive.open_archive(tmp_path / "plain.zarr").load())
    assert reference.frames_added == 4
    # An existing scheduler takes the same flow; archived files are not read again.
    shutil.copy(sorted((shared_data / "radar/KNMI/2010/08").glob("*.h5"))[5], folder)
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        again = ingest_flow("knmi", [str(folder)], str(tmp_path / "flow.zarr"),
                            dask_address=cluster.scheduler_address)
    assert again.frames_added == 1 and len(again.unchanged) == 4 and len(again.skipped) == 1


def test_cluster_ingest_writes_from_workers_the_same_archive(shared_data, tmp_path):
    """The library's cluster route without Prefect: worker processes stage, this process commits."""
    files = sorted((shared_data / "radar/KNMI/2010/08").glob("*.h5"))[:8]
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as client:
        report = ingest("knmi", files[4:] + files[:3], tmp_path / "c.zarr", client=client)
        assert report.ok and report.frames_added == 7
        assert ingest("knmi", files, tmp_path / "c.zarr", client=client).frames_added == 1
    ingest("knmi", files, tmp_path / "plain.zarr")
    xr.testing.assert_identical(archive.open_archive(tmp_path / "c.zarr").load(),
                                archive.open_archive(tmp_path / "plain.zarr").load())
