"""Checkpoints: content digest checked at load, a corrupt best.pt falls back to last.pt, mismatches named,
metadata read without the weights."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from nowcast import models
from nowcast.checkpoint import (BEST, LAST, CheckpointError, load_checkpoint, load_run, metadata, metadata_path,
                                read_metadata, save_checkpoint)
from nowcast.forecast import load_model
from nowcast.transforms import make


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = models.build("stlight-tiny")
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, model.t_in, model.in_channels, 16, 16)).mean().backward()
    optimiser.step()
    return {"epoch": 1, "step": 1, "model": {"name": "stlight-tiny", "config": model.config,
                                             "state": model.state_dict()},
            "optimizer": optimiser.state_dict(), "transform": make(None, "rainrate").to_dict(),
            "data": {"variable": "rainrate", "time_step": "PT5M"}, "config": {}}


def _flip_a_byte_inside(path, tensor: torch.Tensor) -> None:
    """Flip one byte of ``tensor``'s stored data: the file still unpickles, the values are wrong."""
    raw = path.read_bytes()
    needle = tensor.detach().contiguous().numpy().tobytes()[:64]
    at = raw.find(needle)
    assert at > 0
    data = bytearray(raw)
    data[at + 17] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_optimiser_state_are_an_error_not_a_silent_load(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / LAST)
    assert load_checkpoint(path)["epoch"] == 1
    moment = state["optimizer"]["state"][0]["exp_avg"]
    _flip_a_byte_inside(path, moment)
    torch.load(path, weights_only=True)  # still loads with plain torch: only the digest tells
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)


def test_a_corrupt_best_falls_back_to_last_with_a_warning(tmp_path, caplog):
    best, last = _state(1), _state(2)
    save_checkpoint(best, tmp_path / BEST)
    save_checkpoint(last, tmp_path / LAST)
    _flip_a_byte_inside(tmp_path / BEST, next(iter(best["model"]["state"].values())))
    with caplog.at_level(logging.WARNING, logger="nowcast.checkpoint"):
        path, state = load_run(tmp_path)
    assert path == tmp_path / LAST and "corrupt checkpoint" in caplog.text and "using" in caplog.text
    model, _, meta = load_model(tmp_path)
    assert meta["checkpoint"] == str(tmp_path / LAST)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), last["model"]["state"][name].numpy())


def test_preset_config_and_weights_that_disagree_are_named(tmp_path):
    state = _state()
    state["model"]["name"] = "tau-tiny"  # weights of an STLight under a TAU preset
    save_checkpoint(state, tmp_path / BEST)
    with pytest.raises(CheckpointError, match=r"best\.pt: its model 'tau-tiny', configuration and weights do not"):
        load_model(tmp_path)


def test_metadata_comes_from_the_sidecar_without_reading_the_checkpoint(tmp_path, monkeypatch):
    state = _state()
    save_checkpoint(state, tmp_path / BEST)
    assert metadata_path(tmp_path / BEST) == tmp_path / "best.meta.json"
    expected = json.loads(json.dumps(metadata({"format": "nowcast-checkpoint-v1", **state})))
    assert "state" not in expected["model"] and expected["model"]["config"]["t_in"] == 8

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_load)
    assert read_metadata(tmp_path) == (tmp_path / BEST, expected)


def test_metadata_without_a_matching_sidecar_is_read_from_the_checkpoint_memory_mapped(tmp_path, monkeypatch):
    state = _state()
    path = save_checkpoint(state, tmp_path / LAST)
    expected = read_metadata(path)[1]
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or real(*a, **kw))
    metadata_path(path).unlink()  # a run saved before sidecars
    assert read_metadata(tmp_path) == (path, expected)
    assert loads == [{"map_location": "cpu", "weights_only": True, "mmap": True}]
    save_checkpoint(_state(seed=1) | {"epoch": 7}, tmp_path / "other.pt")
    metadata_path(tmp_path / "other.pt").rename(metadata_path(path))  # a stale sidecar: another file's
    assert read_metadata(path)[1] == expected and len(loads) == 2
