"""The anomaly frame: crowd flows learnt as departures from their weekly cycle (tiny presets, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nowcast import anomaly, archive, models
from nowcast import forecast as fc
from nowcast.baselines import historical_average
from nowcast.checkpoint import load_checkpoint
from nowcast.synthetic import synthetic_radar, synthetic_traffic
from nowcast.training import train
from nowcast.transforms import make
from nowcast.windows import split_datasets

pytestmark = pytest.mark.xdist_group("anomaly")


@pytest.fixture(scope="module")
def flows():
    """Six weeks of hourly synthetic flows on 16 x 16 cells (training, the first 80 %, reaches past week 4)."""
    return synthetic_traffic(42, size=16, step="1h", seed=2).load()


def test_untrained_model_persists_the_issue_anomaly_over_the_historical_average(flows):
    torch.manual_seed(0)
    model = models.build("stlight-tiny", t_in=4, t_out=3, in_channels=2, frame="anomaly").eval()
    transform = make("log1p", "crowd_flow", [flows["crowd_flow"].values[:400]])
    flows = flows.copy(deep=True)
    at = pd.Timestamp(flows["time"].values[-10])
    flows["crowd_flow"].loc[{"time": at - pd.Timedelta(weeks=2)}] = np.nan  # a missing week: skipped, as the baseline
    out = fc.forecast(flows, (model, transform, {"preset": "stlight-tiny"}), at=at, n_leads=5)
    assert out.attrs["frame"] == "anomaly"
    usual = historical_average(flows, 5, at=at)["crowd_flow"].values
    now = flows["crowd_flow"].sel(time=at).values
    usual_now = anomaly.climatology(flows["crowd_flow"], [at])[0]
    expected = transform.inverse(transform.forward(usual) + transform.forward(now) - transform.forward(usual_now))
    np.testing.assert_allclose(out["crowd_flow"].values, expected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(expected, usual)  # the anomaly is not zero


def test_training_windows_are_anomalies_with_full_weeks_of_history(flows, tmp_path):
    splits = split_datasets(flows, 4, 2, fractions=(0.8, 0.2, 0.0), transform="log1p")
    before = len(splits.train)
    anomaly.attach(splits, flows)
    starts = splits.train.samples[:, 0]
    assert len(splits.train) == before - 4 * 7 * 24  # no window starts in the first four weeks
    assert starts.min() == 4 * 7 * 24 and len(splits.val) > 0
    x, y = splits.train[7]
    start = int(starts[7])
    window = flows["crowd_flow"].values[start:start + 6]
    usual = np.mean([flows["crowd_flow"].values[start - k * 168:start - k * 168 + 6] for k in (1, 2, 3, 4)], axis=0)
    expected = splits.transform.forward(window) - splits.transform.forward(usual)
    np.testing.assert_allclose(torch.cat([x, y]).numpy(), expected, rtol=1e-5, atol=1e-5)

    result = train(flows, "stlight-tiny", tmp_path / "run", t_in=4, t_out=2, epochs=1, steps_per_epoch=2,
                   batch_size=4, fractions=(0.8, 0.2, 0.0), progress=False, frame="anomaly")
    assert load_checkpoint(result.best_checkpoint)["model"]["config"]["frame"] == "anomaly"
    out = fc.forecast(flows, result.run_dir, n_leads=2)  # the checkpoint's frame, unasked
    assert out.attrs["frame"] == "anomaly" and np.isfinite(out["crowd_flow"].values).all()


def test_anomaly_frame_refuses_rain_and_short_histories(flows, tmp_path):
    common = dict(t_in=4, t_out=2, epochs=1, steps_per_epoch=1, batch_size=2, fractions=(0.8, 0.2, 0.0),
                  progress=False, frame="anomaly")
    with pytest.raises(ValueError, match="'rainrate' has none to learn from"):
        train(synthetic_radar(24, size=32, seed=1), "stlight-tiny", tmp_path / "rain", **common)
    store = tmp_path / "short.zarr"
    archive.write(flows.isel(time=slice(0, 24 * 20)), store)
    with pytest.raises(ValueError, match="needs 4 full weeks of history.*train eulerian"):
        train(store, "stlight-tiny", tmp_path / "short", **common)
