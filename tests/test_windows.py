"""Windows over an archive: gaps, time-block splits without leakage, patches, wet filter, transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from nowcast import archive, transforms
from nowcast.synthetic import synthetic_radar, synthetic_traffic
from nowcast.transforms import DBR, Log1p, MinMax, fit_minmax, from_dict
from nowcast.windows import WindowDataset, gapless_starts, split_datasets, split_windows, tile_origins

GAP = 30  # index of the frame removed from the archive


@pytest.fixture(scope="module")
def radar_store(tmp_path_factory):
    """64 × 64 synthetic radar, 80 frames at 5 min, with the frame at index 30 missing."""
    obs = synthetic_radar(80, size=64, seed=11)
    store = tmp_path_factory.mktemp("windows") / "radar.zarr"
    archive.write(obs.drop_isel(time=[GAP]), store)
    return store, obs


def test_windows_skip_the_gap_and_match_the_archive(radar_store):
    store, obs = radar_store
    ds = WindowDataset(store, 4, 2)
    times = archive.times(store)
    assert len(ds) == (GAP - 6 + 1) + (79 - GAP - 6 + 1)
    for start in ds.starts:  # every window is six consecutive 5-min frames
        assert (times[start + 5] - times[start]) == pd.Timedelta("25min")
    x, y = ds[GAP - 6]  # the last window before the gap
    assert x.shape == (4, 1, 64, 64) and y.shape == (2, 1, 64, 64) and x.dtype == torch.float32
    np.testing.assert_array_equal(y[-1, 0].numpy(), obs["rainrate"].values[GAP - 1])
    x, _ = ds[GAP - 5]  # the first window after the gap starts right after it
    np.testing.assert_array_equal(x[0, 0].numpy(), obs["rainrate"].values[GAP + 1])


def test_windows_read_lazily_and_survive_pickling(radar_store):
    store, _ = radar_store
    ds = WindowDataset(store, 4, 2, patch=32)
    assert not isinstance(ds.data.variable._data, np.ndarray)  # a lazy backend array, not loaded
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive
    assert clone._data is None
    torch.testing.assert_close(clone[7], ds[7], rtol=0, atol=0)


def test_gapless_starts_and_tiles():
    times = pd.date_range("2024-01-01", periods=10, freq="5min").delete([4])
    assert gapless_starts(times, 3, pd.Timedelta("5min")).tolist() == [0, 1, 4, 5, 6]
    assert tile_origins(10, 4, 4) == [0, 4, 6]
    assert tile_origins(8, 4, 4) == [0, 4]
    assert tile_origins(4, 8, 2) == [0]


@pytest.mark.parametrize("block", [None, "30min"])
def test_splits_share_no_frame(radar_store, block):
    store, _ = radar_store
    times = archive.times(store)
    parts = split_windows(times, 6, "5min", fractions=(0.6, 0.2, 0.2), block=block, seed=3)
    frames = {name: {times[s + k] for s in starts for k in range(6)} for name, starts in parts.items()}
    assert all(len(parts[name]) for name in parts)
    assert not frames["train"] & frames["val"]
    assert not frames["train"] & frames["test"]
    assert not frames["val"] & frames["test"]
    if block is None:  # chronological: all training frames come first
        assert max(frames["train"]) < min(frames["val"]) <= max(frames["val"]) < min(frames["test"])
    else:  # shuffled 30-min blocks interleave the splits
        assert min(frames["val"]) < max(frames["train"])


def test_patches_and_wet_fraction_filter(radar_store):
    store, obs = radar_store
    every = WindowDataset(store, 4, 2, patch=24, stride=20)
    assert every.tiles == [(y, x) for y in (0, 20, 40) for x in (0, 20, 40)]
    assert len(every) == len(every.starts) * 9
    wet = WindowDataset(store, 4, 2, patch=24, stride=20, min_wet_fraction=0.5, wet_threshold=0.1)
    assert 0 < len(wet) < len(every)
    fractions = [float((np.concatenate(wet[i]) >= 0.1).mean()) for i in range(len(wet))]
    assert min(fractions) >= 0.5
    dropped = {tuple(s) for s in every.samples} - {tuple(s) for s in wet.samples}
    start, tile = next(iter(dropped))
    frames = every.read(start, start + 6, tile)
    assert (frames >= 0.1).mean() < 0.5


def test_split_datasets_fit_the_scaling_on_train_only(tmp_path):
    flows = synthetic_traffic(6, seed=2)
    flows["crowd_flow"][144:] *= 3  # busier later days: their peaks must not set the scaling
    store = tmp_path / "traffic.zarr"
    archive.write(flows, store)
    splits = split_datasets(store, 4, 4, fractions=(0.5, 0.25, 0.25))
    assert isinstance(splits.transform, Log1p)  # counts: log1p up to a robust top
    train_frames = np.concatenate(list(splits.train.iter_frames()))
    top = float(np.quantile(train_frames, transforms.TOP_QUANTILE))
    assert splits.transform.max_rate == pytest.approx(top, rel=1e-6)
    assert splits.transform.max_rate < float(flows["crowd_flow"].max()) / 2
    x, y = splits.val[0]
    assert x.shape == (4, 2, 32, 32) and splits.val.transform is splits.transform
    assert float(x.min()) >= 0.0
    minmax = split_datasets(store, 4, 4, fractions=(0.5, 0.25, 0.25), transform="minmax").transform
    assert minmax.lo == float(train_frames.min()) and minmax.hi == pytest.approx(top, rel=1e-6)


@pytest.mark.parametrize("fit", [transforms.fit_minmax, transforms.fit_log1p])
def test_fitted_top_is_a_quantile_and_larger_values_survive(fit, monkeypatch):
    rng = np.random.default_rng(0)
    batches = [rng.pareto(2.0, (7, 2, 16, 8)).astype("f4") for _ in range(12)]  # heavy-tailed counts
    values = np.concatenate([b.ravel() for b in batches])
    scaler = fit(batches)
    top = scaler.hi if isinstance(scaler, MinMax) else scaler.max_rate
    assert top == pytest.approx(float(np.quantile(values, 0.999)), rel=1e-6)
    assert top < values.max() / 2
    above = np.sort(values[values > top])
    assert scaler.forward(above).max() > 1.0  # not clipped on the way in ...
    np.testing.assert_allclose(scaler.inverse(scaler.forward(above)), above, rtol=1e-4)  # ... nor out
    assert scaler.inverse(np.array([1e3], "f4"))[0] == pytest.approx(1.5 * values.max(), rel=1e-4)
    assert from_dict(scaler.to_dict()) == scaler
    monkeypatch.setattr(transforms, "SAMPLE_LIMIT", 5000)  # 21,504 values: every 8th kept, min and max exact
    lo, thinned, hi = transforms.fit_range(batches)
    assert (lo, hi) == (values.min(), values.max())
    assert thinned == pytest.approx(float(np.quantile(values[::8], 0.999)), rel=1e-6)


def test_checkpoints_of_earlier_versions_rebuild_their_transform():
    assert from_dict({"kind": "log1p", "max_rate": 200.0}) == Log1p()
    old = {"kind": "minmax", "lo": 0.0, "hi": 13856.0, "clip_min": 0.0, "max_scaled": 1.5}
    assert from_dict(old) == MinMax(0.0, 13856.0, 0.0)
    assert transforms.make(None, "rainrate") == DBR() and transforms.make(None, "accumulation") == Log1p()


def test_rain_transforms_round_trip():
    rates = np.array([np.nan, 0.0, 0.05, 0.1, 1.0, 12.5, 150.0], dtype="f4")
    for transform in (DBR(), Log1p()):
        scaled = transform.forward(rates)
        assert scaled.dtype == np.float32 and scaled[0] == scaled[1] == 0.0
        assert 0.0 <= scaled.min() and scaled.max() < 1.0
        back = transform.inverse(scaled)
        np.testing.assert_allclose(back[3:], rates[3:], rtol=1e-5)
        assert back[0] == back[1] == 0.0
        assert from_dict(transform.to_dict()) == transform
    dbr = DBR()
    assert dbr.forward(np.array([0.05], "f4"))[0] == 0.0  # below the threshold is dry
    assert dbr.inverse(np.array([5.0], "f4"))[0] == pytest.approx(dbr.max_rate)  # capped


def test_minmax_fit_and_inverse():
    mm = fit_minmax([np.array([[2.0, np.nan]]), np.array([10.0, 4.0])], clip_min=0.0, quantile=1.0)
    assert (mm.lo, mm.hi) == (2.0, 10.0)
    np.testing.assert_allclose(mm.forward(np.array([2.0, 6.0, 10.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(mm.inverse(np.array([-1.0, 0.5])), [0.0, 6.0])
    assert from_dict(mm.to_dict()) == mm
    with pytest.raises(ValueError, match="no finite"):
        fit_minmax([np.array([np.nan])])


def test_minmax_inverse_caps_exploding_network_output():
    scaler = MinMax(lo=0.0, hi=1000.0, clip_min=0.0)
    out = scaler.inverse(np.array([-0.2, 0.5, 1.2, 40.0], dtype="f4"))
    np.testing.assert_allclose(out, [0.0, 500.0, 1200.0, 1500.0])
    assert from_dict(scaler.to_dict()) == scaler


def test_small_archives_and_events_still_validate():
    """A validation share too short for one window grows to one; ``block="event"`` deals whole gapless runs."""
    times = pd.date_range("2024-06-01", periods=40, freq="5min")
    parts = split_windows(times, 18, "5min", fractions=(0.8, 0.1, 0.1))
    assert [len(parts[k]) for k in ("train", "val", "test")] == [1, 1, 0]  # test would leave training none
    assert list(parts["val"]) == [18]
    two = times.append(pd.date_range("2024-06-02", periods=30, freq="5min"))
    by_event = split_windows(two, 18, "5min", fractions=(0.5, 0.5, 0.0), block="event", seed=1)
    owners = {len(by_event["train"]), len(by_event["val"])}
    assert owners == {40 - 18 + 1, 30 - 18 + 1} and len(by_event["test"]) == 0


def test_each_event_split_trains_and_validates_on_every_event():
    """``block="each-event"``: a chronological cut of the stacked axis leaves the last event all validation
    (its 40 frames hold 14 training frames, no 18-frame window); cut per event, both events train."""
    first = pd.date_range("2010-08-26", periods=92, freq="5min")
    times = first.append(pd.date_range("2015-05-15 15:45", periods=40, freq="5min"))
    whole = split_windows(times, 18, "5min", fractions=(0.8, 0.2, 0.0))
    assert whole["train"].max() < 92 and whole["val"].min() >= 92
    each = split_windows(times, 18, "5min", fractions=(0.8, 0.2, 0.0), block="each-event")
    # KNMI: 92 frames, its last 18 validate; MeteoSwiss: 40 frames, its last 18 validate, 22 train (5 windows).
    assert list(each["train"]) == list(range(0, 57)) + list(range(92, 97))
    assert list(each["val"]) == [74, 114] and len(each["test"]) == 0
    for train_start in each["train"]:
        assert not set(range(train_start, train_start + 18)) & {f for v in each["val"] for f in range(v, v + 18)}
