"""Zarr archive: regular time axis, idempotent, crash-safe at every store write, one writer at a time."""

import shutil

import numpy as np
import pandas as pd
import pytest

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


def test_other_grid_is_refused_with_the_reason(tmp_path):
    store = tmp_path / "a.zarr"
    archive.write(_radar(3), store)
    with pytest.raises(ArchiveError, match=r"another grid: grid shape \(12, 12\) differs"):
        archive.write(_radar(3, start="2024-06-01T13:00", size=12), store)


def test_late_frames_fill_their_slots_and_gaps_stay_gaps(tmp_path):
    store = tmp_path / "a.zarr"
    full = _radar(12)
    archive.write(full.isel(time=[0, 1, 2, 6, 7, 11]), store)
    assert list(archive.times(store)) == list(full["time"].values[[0, 1, 2, 6, 7, 11]])
    assert archive.write(full.isel(time=[3, 4]), store) == 2          # late: after 6..11 arrived
    assert archive.write(full.isel(time=[3, 5]), store) == 1          # 3 again: a no-op for that frame
    back = archive.open_archive(store)
    keep = [0, 1, 2, 3, 4, 5, 6, 7, 11]
    np.testing.assert_array_equal(back["time"].values, full["time"].values[keep])
    np.testing.assert_array_equal(back["rainrate"].values, full["rainrate"].values[keep])
    assert archive.write(full, store) == 3                            # the last gap, 8..10
    np.testing.assert_array_equal(archive.open_archive(store)["rainrate"].values, full["rainrate"].values)


def test_earlier_frames_go_before_and_times_off_the_axis_are_refused_by_name(tmp_path):
    store = tmp_path / "a.zarr"
    archive.write(_radar(3, start="2024-06-01T13:00"), store)
    assert archive.write(_radar(3, start="2023-06-01T12:00"), store) == 3   # a year earlier
    with pytest.raises(ArchiveError, match="not on the archive's regular axis"):
        archive.write(_radar(1, start="2024-06-01T13:02"), store)
    assert list(archive.times(store).strftime("%Y%m%d%H%M")) == [
        "202306011200", "202306011205", "202306011210", "202406011300", "202406011305", "202406011310"]


class Crash(Exception):
    """Stands for a kill at one store write."""


def _crash_at(monkeypatch, k: int) -> dict:
    """Make the k-th write to any Zarr store raise (k=0: never); returns the write counter."""
    from zarr.storage import LocalStore

    calls = {"n": 0}
    original, commit = LocalStore.set, archive.write_text_atomic

    def count(key):
        calls["n"] += 1
        if calls["n"] == k:
            raise Crash(key)

    async def set_(self, key, value, *args, **kwargs):
        count(key)
        return await original(self, key, value, *args, **kwargs)

    def write_text_atomic(path, text):  # the commit record
        count(path)
        return commit(path, text)

    monkeypatch.setattr(LocalStore, "set", set_)
    monkeypatch.setattr(archive, "write_text_atomic", write_text_atomic)
    return calls


def test_a_crash_at_any_store_write_keeps_the_last_commit_and_the_next_write_completes(tmp_path, monkeypatch):
    full = _radar(30, size=64)  # 64 x 64 frames: several chunks, so appends write many store keys
    first, late_and_new = full.isel(time=list(range(0, 10)) + [20]), full.isel(time=list(range(10, 30)))
    base = tmp_path / "base.zarr"
    archive.write(first, base)
    with monkeypatch.context() as m:
        counter = _crash_at(m, 0)
        archive.write(late_and_new, shutil.copytree(base, tmp_path / "count.zarr"))
    writes = counter["n"]
    assert writes >= 4
    for k in range(1, writes + 1):
        store = shutil.copytree(base, tmp_path / f"crash{k}.zarr")
        with monkeypatch.context() as m:
            _crash_at(m, k)
            with pytest.raises(Crash):
                archive.write(late_and_new, store)
        seen = archive.open_archive(store)              # exactly the last committed state
        np.testing.assert_array_equal(seen["time"].values, first["time"].values)
        np.testing.assert_array_equal(seen["rainrate"].values, first["rainrate"].values)
        assert archive.write(late_and_new, store) == 19  # the next write repairs and completes
        np.testing.assert_array_equal(archive.open_archive(store)["rainrate"].values, full["rainrate"].values)


def test_a_crash_at_any_write_of_a_creation_leaves_nothing_visible(tmp_path, monkeypatch):
    ds = _radar(4)
    with monkeypatch.context() as m:
        counter = _crash_at(m, 0)
        archive.write(ds, tmp_path / "count.zarr")
    for k in range(1, counter["n"] + 1):
        store = tmp_path / f"a{k}.zarr"
        with monkeypatch.context() as m:
            _crash_at(m, k)
            with pytest.raises(Crash):
                archive.write(ds, store)
        assert not store.exists() and not archive.exists(store)
        assert archive.write(ds, store) == 4


def test_leftovers_of_a_killed_creation_are_removed(tmp_path):
    leftover = tmp_path / ".a.zarr.tmp-deadbeef"
    (leftover / "rainrate").mkdir(parents=True)
    archive.write(_radar(2), tmp_path / "a.zarr")
    assert not leftover.exists()


def _write_frames(store: str, indices: list[int], out) -> None:
    added = sum(archive.write(_radar(12).isel(time=[i]), store) for i in indices)
    out.put(added)


def test_concurrent_writers_store_every_frame_once_and_report_truly(tmp_path):
    """Two processes write interleaved and overlapping frames into one archive at once (like overlapping cron jobs)."""
    import multiprocessing

    store = str(tmp_path / "a.zarr")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    jobs = [ctx.Process(target=_write_frames, args=(store, list(range(0, 12)), out)),
            ctx.Process(target=_write_frames, args=(store, list(range(11, -1, -1)), out))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert out.get(timeout=5) + out.get(timeout=5) == 12
    full = _radar(12)
    back = archive.open_archive(store)
    np.testing.assert_array_equal(back["time"].values, full["time"].values)
    np.testing.assert_array_equal(back["rainrate"].values, full["rainrate"].values)


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    import threading

    store = tmp_path / "a.zarr"
    held, release = threading.Event(), threading.Event()

    def other_writer():
        with archive.lock(store):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(archive.ArchiveLocked, match="another writer has held its lock"):
            archive.write(_radar(2), store, lock_timeout=0.2)
    finally:
        release.set()
        thread.join()
    assert archive.write(_radar(2), store) == 2


def test_a_folder_that_is_not_an_archive_is_not_overwritten(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "keep.txt").write_text("precious")
    with pytest.raises(ArchiveError, match="not a nowcast archive"):
        archive.write(_radar(2), tmp_path / "x.zarr")
    assert (tmp_path / "x.zarr" / "keep.txt").read_text() == "precious"
