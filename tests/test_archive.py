"""Zarr archive: idempotent, append-only in time, atomic for readers, refuses other grids."""

import numpy as np
import pandas as pd
import pytest
import zarr

from nowcast import archive
from nowcast.archive import ArchiveError
from nowcast.grids import radar_grid
from nowcast.schema import make_dataset


def _radar(n=6, start="2024-06-01T12:00", size=16, seed=0):
    grid = radar_grid(size)
    data = np.random.default_rng(seed).gamma(0.5, 2.0, (n, size, size)).astype("f4")
    data[:, :2, :2] = np.nan
    return make_dataset(data, times=pd.date_range(start, periods=n, freq="5min"), x=grid.x, y=grid.y,
                        crs=grid.crs, source="test", time_step="5min")


def test_write_then_read_back_exactly(tmp_path):
    ds = _radar()
    assert archive.write(ds, tmp_path / "a.zarr") == 6
    back = archive.open_archive(tmp_path / "a.zarr")
    np.testing.assert_array_equal(back["rainrate"].values, ds["rainrate"].values)
    assert back["rainrate"].chunks is not None  # lazy, dask-backed
    assert back.attrs["time_step"] == "PT5M"


def test_rewriting_the_same_times_changes_nothing(tmp_path):
    store = tmp_path / "a.zarr"
    ds = _radar()
    archive.write(ds, store)
    before = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file())
    assert archive.write(ds, store) == 0
    after = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file())
    assert before == after


def test_append_adds_only_new_times_and_keeps_gaps(tmp_path):
    store = tmp_path / "a.zarr"
    full = _radar(12)
    archive.write(full.isel(time=slice(0, 5)), store)
    # Overlapping batch with a gap: frames 3..5 and 8..11.
    assert archive.write(full.isel(time=[3, 4, 5, 8, 9, 10, 11]), store) == 5
    back = archive.open_archive(store)
    expected = full.isel(time=[0, 1, 2, 3, 4, 5, 8, 9, 10, 11])
    np.testing.assert_array_equal(back["time"].values, expected["time"].values)
    np.testing.assert_array_equal(back["rainrate"].values, expected["rainrate"].values)


def test_interrupted_append_is_invisible_and_resumable(tmp_path):
    store = tmp_path / "a.zarr"
    full = _radar(10)
    archive.write(full.isel(time=slice(0, 4)), store)
    # Simulate a crash after the arrays grew but before the commit marker moved.
    group = zarr.open_group(str(store), mode="r+")
    for name in ("rainrate", "time"):
        arr = group[name]
        arr.resize((7,) + arr.shape[1:])
    assert archive.open_archive(store).sizes["time"] == 4
    assert archive.write(full, store) == 6
    np.testing.assert_array_equal(archive.open_archive(store)["rainrate"].values, full["rainrate"].values)


def test_other_grid_is_refused_with_the_reason(tmp_path):
    store = tmp_path / "a.zarr"
    archive.write(_radar(3), store)
    with pytest.raises(ArchiveError, match=r"another grid: grid shape \(12, 12\) differs"):
        archive.write(_radar(3, start="2024-06-01T13:00", size=12), store)


def test_times_before_the_end_are_refused(tmp_path):
    store = tmp_path / "a.zarr"
    archive.write(_radar(3, start="2024-06-01T13:00"), store)
    with pytest.raises(ArchiveError, match="before the archive's last time"):
        archive.write(_radar(3, start="2024-06-01T12:00"), store)


def test_a_folder_that_is_not_an_archive_is_not_overwritten(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "keep.txt").write_text("precious")
    with pytest.raises(ArchiveError, match="not a nowcast archive"):
        archive.write(_radar(2), tmp_path / "x.zarr")
    assert (tmp_path / "x.zarr" / "keep.txt").read_text() == "precious"
