"""Model sizes against the papers, the preset table and the config round trip.

Models are built on the meta device: no memory, no compute.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from nowcast import models
from nowcast.models import MKLSTMCell, build, list_presets, parameter_count

PUBLISHED = {r.name: r.published_parameters for r in list_presets() if r.published_parameters}
PUBLISHED_MACS = {r.name: r.published_macs for r in list_presets() if r.published_macs}


def meta_count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return parameter_count(build(name, **overrides))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_paper(name):
    published = PUBLISHED[name]
    assert abs(meta_count(name) - published) <= 0.005 * published


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_macs_match_paper(name):
    """MACs of one sample as the paper counts them (the STLight paper leaves depthwise convolutions out)."""
    published = PUBLISHED_MACS[name]
    assert abs(models.macs(name) - published) <= 0.01 * published


def test_every_published_figure_is_checked():
    expected = {"tau-taxibj", "tau-mmnist", "stlight-xs-mmnist", "stlight-s-mmnist",
                "stlight-m-mmnist", "stlight-l-mmnist", "stlight-s-taxibj", "stlight-m-taxibj",
                "stlight-l-taxibj", "mslstm-mmnist"}
    assert expected <= set(PUBLISHED)
    assert {"tau-taxibj", "tau-mmnist", "stlight-l-taxibj"} <= set(PUBLISHED_MACS)


def test_stlight_l_taxibj_width_fits_macs_too(monkeypatch):
    """d 256, de 36 (the earlier preset) matches the parameter count but not the published 2.71 G MACs."""
    preset = models.PRESETS["stlight-l-taxibj"]
    assert (preset.kwargs["dim"], preset.kwargs["depth"]) == (512, 10)
    narrow = dataclasses.replace(preset, kwargs={**preset.kwargs, "dim": 256, "depth": 36})
    monkeypatch.setitem(models.PRESETS, "stlight-narrow", narrow)
    assert abs(meta_count("stlight-narrow") - 2_960_000) <= 0.005 * 2_960_000
    assert models.macs("stlight-narrow") == pytest.approx(2.42e9, rel=0.005)


def test_own_recounts_are_labelled():
    rows = {r.name: r for r in list_presets()}
    assert rows["mslstm-mmnist"].recount and "recount" in rows["mslstm-mmnist"].note
    assert not any(rows[n].recount for n in ("tau-taxibj", "tau-mmnist", "stlight-l-taxibj"))


def test_mk_lstm_cell_and_ms_lstm_counts_are_exact():
    with torch.device("meta"):
        assert parameter_count(MKLSTMCell(64, 64)) == 1_262_784
    assert meta_count("mslstm-mmnist") == 7_576_897
    # six cells, 2 -> 64 embedding, 64 -> 2 readout
    assert meta_count("mslstm-taxibj") == 6 * 1_262_784 + (2 * 64 + 64) + (64 * 2 + 2)


@pytest.mark.parametrize("name", ["stlight-xs-mmnist", "stlight-l-mmnist", "stlight-m-taxibj", "stlight-l-taxibj"])
def test_stlight_count_follows_the_architecture(name):
    """Patch conv + BN, de × (dw k1 + dw k2 + BN + 1×1 + BN), 1×1 readout after PixelShuffle."""
    k = models.PRESETS[name].kwargs
    d, de, p, c = k["dim"], k["depth"], k["patch"], k["in_channels"]
    encoder = k["t_in"] * c * p * p * d + d + 2 * d
    mixer = (9 * d + d) + (49 * d + d) + 2 * d + (d * d + d) + 2 * d
    readout = (d // (p * p)) * k["t_out"] * c + k["t_out"] * c
    assert meta_count(name) == encoder + de * mixer + readout


def test_tau_squeeze_excitation_width():
    with torch.device("meta"):
        wide = models.tau.TemporalAttentionModule(256)
        narrow = models.tau.TemporalAttentionModule(32)
    assert wide.se[0].out_features == 16
    assert narrow.se[0].out_features == 8


def test_list_presets_rows():
    rows = {r.name: r for r in list_presets()}
    required = {"tau-taxibj", "tau-mmnist", "tau-radar", "tau-tiny", "stlight-xs-mmnist",
                "stlight-s-mmnist", "stlight-m-mmnist", "stlight-l-mmnist", "stlight-s-taxibj",
                "stlight-m-taxibj", "stlight-l-taxibj", "stlight-radar", "stlight-tiny",
                "mslstm-mmnist", "mslstm-taxibj", "mslstm-radar", "mslstm-tiny"}
    assert required <= set(rows)
    radar = rows["tau-radar"]
    assert (radar.t_in, radar.t_out, radar.channels, radar.height, radar.width) == (12, 12, 1, 128, 128)
    assert rows["stlight-s-taxibj"].channels == 2
    for r in rows.values():
        assert r.family in models.FAMILIES
        assert r.parameters == meta_count(r.name)
        assert r.training is not None and r.training.lr > 0 and r.training.batch_size > 0
    assert rows["mslstm-mmnist"].training.scheduled_sampling
    assert all(r.training.lr == 3e-3 for r in rows.values() if r.family == "stlight")  # paper Table 2
    assert {r.training.schedule for n, r in rows.items() if n.startswith("stlight") and "taxibj" in n} == {"cosine"}
    tau = rows["tau-taxibj"].training  # OpenSTL configs/taxibj/TAU.py
    assert (tau.lr, tau.schedule, tau.warmup_epochs) == (5e-4, "cosine", 5)
    json.dumps([dataclasses.asdict(r) for r in rows.values()])


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_config_round_trip(name):
    with torch.device("meta"):
        model = build(name)
        config = json.loads(json.dumps(model.config))
        by_preset = build(model.preset, **config)
        by_family = build(model.family, **config)
    assert model.preset == name and by_preset.preset == name and by_family.preset is None
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for clone in (by_preset, by_family):
        assert type(clone) is type(model)
        assert clone.config == model.config
        assert {k: v.shape for k, v in clone.state_dict().items()} == shapes
    assert (model.t_in, model.t_out, model.in_channels) == (
        config["t_in"], config["t_out"], config["in_channels"])


def test_overrides_and_unknown_names():
    with torch.device("meta"):
        model = build("tau-radar", t_out=6, hid_t=128)
    assert model.t_out == 6 and model.config["hid_t"] == 128 and model.preset == "tau-radar"
    with pytest.raises(KeyError):
        build("convlstm")
    with pytest.raises(KeyError):
        models.paper_loss("convlstm")


def test_paper_loss_per_family():
    assert models.paper_loss("tau-mmnist") is models.tau_loss
    assert models.paper_loss("stlight") is models.mse
    with torch.device("meta"):
        assert models.paper_loss(build("mslstm-tiny")) is models.l1_l2_per_frame


def test_training_loss_by_name():
    pred, target = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    assert models.training_loss("tau-tiny") is models.tau_loss
    assert models.training_loss("tau-tiny", "mae")(pred, target).item() == pytest.approx(2.0)
    assert models.training_loss("stlight", "mse")(pred, target).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="unknown loss"):
        models.training_loss("tau", "huber")
    assert models.training_loss("tau", "quantile", 0.5)(pred, target).item() == pytest.approx(2.0)  # = MAE
    assert models.training_loss("tau", "quantile", 0.6)(pred, target).item() == pytest.approx(1.8)
    for loss, q, match in (("quantile", None, "needs a quantile"), ("quantile", 1.0, "needs a quantile"),
                           ("mae", 0.6, "for loss 'quantile'")):
        with pytest.raises(ValueError, match=match):
            models.training_loss("tau", loss, q)


@pytest.mark.parametrize("q", [0.3, 0.6, 0.9])
def test_quantile_loss_is_least_at_the_quantile(q):
    """Among constant forecasts of skewed, rain-like samples the pinball loss is least at their q-quantile."""
    target = torch.from_numpy(np.random.default_rng(0).gamma(0.5, 2.0, 4000)).float()
    candidates = torch.linspace(0, 6, 1201)
    scores = torch.stack([models.quantile(c.expand_as(target), target, q) for c in candidates])
    best = candidates[scores.argmin()].item()
    assert best == pytest.approx(np.quantile(target.numpy(), q), abs=0.01)
