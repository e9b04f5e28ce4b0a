"""What every nowcasting network shares: shapes, metadata, frame and rollout.

A network maps ``x: [B, T_in, C, H, W]`` to ``[B, T_out, C, H, W]`` and
remembers the keyword arguments it was built with in ``config`` (JSON-safe),
so that ``nowcast.models.build(model.family, **model.config)`` rebuilds it.

``frame`` (:data:`FRAMES`) says in which frame of reference the network
learns. ``eulerian`` (the papers'): it maps observed frames to frames.
``lagrangian`` (:mod:`nowcast.lagrangian`): its inputs are advected to the
issue time and every output frame is a residual added to the frame before it
(the last input for a direct model, the frame just read for a recurrent one),
with a zero-initialised readout layer, so an untrained network is
persistence in that frame. ``anomaly`` (:mod:`nowcast.anomaly`, crowd flows):
the same residual network on departures from the weekly cycle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


#: Frames of reference a network can learn in (see the module docstring).
FRAMES = ("eulerian", "lagrangian", "anomaly")


class SequenceModel(nn.Module):
    """Base class: ``t_in``, ``t_out``, ``in_channels``, ``frame``, ``config``, ``preset``."""

    family: str = ""

    def __init__(self, t_in: int, t_out: int, in_channels: int, **hyper: Any) -> None:
        super().__init__()
        if min(t_in, t_out, in_channels) < 1:
            raise ValueError("t_in, t_out and in_channels must be positive")
        self.t_in = int(t_in)
        self.t_out = int(t_out)
        self.in_channels = int(in_channels)
        self.frame = FRAMES[0]
        self.config: dict[str, Any] = {
            "t_in": self.t_in, "t_out": self.t_out, "in_channels": self.in_channels, **hyper,
            "frame": self.frame,
        }
        self.preset: str | None = None

    @property
    def readout_layer(self) -> nn.Conv2d:
        """The layer that emits the output frames (zero-initialised outside the Eulerian frame)."""
        return self.readout

    @property
    def residual(self) -> bool:
        """Whether each output frame is added to the frame before it (the Lagrangian and anomaly frames)."""
        return self.frame != "eulerian"

    def set_frame(self, frame: str) -> SequenceModel:
        """Learn in ``frame``; other than ``eulerian`` it zeroes the readout layer (call before training)."""
        if frame not in FRAMES:
            raise ValueError(f"unknown frame {frame!r}; choose one of {list(FRAMES)}")
        self.frame = self.config["frame"] = frame
        if self.residual:
            nn.init.zeros_(self.readout_layer.weight)
            nn.init.zeros_(self.readout_layer.bias)
        return self

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this (the network's total down-sampling)."""
        return 1

    def _check_input(self, x: torch.Tensor, fixed_length: bool) -> None:
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"expected [B, T, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if fixed_length and x.shape[1] != self.t_in:
            raise ValueError(f"expected {self.t_in} input frames, got {x.shape[1]}")


class DirectModel(SequenceModel):
    """A network that emits a whole block of frames per call of ``predict_block``.

    Longer horizons are rolled out recursively: each new block is predicted
    from the last ``t_in`` frames (observed or predicted); shorter ones are
    truncated.
    """

    def predict_block(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, t_in, C, H, W]`` -> ``[B, block, C, H, W]`` (block fixed by the network)."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        t_out: int | None = None,
        *,
        target: torch.Tensor | None = None,
        sampling_ratio: float | torch.Tensor = 0.0,
    ) -> torch.Tensor:
        """``[B, t_in, C, H, W]`` -> ``[B, t_out, C, H, W]``; ``target``/``sampling_ratio`` unused."""
        self._check_input(x, fixed_length=True)
        t_out = self.t_out if t_out is None else int(t_out)
        blocks: list[torch.Tensor] = []
        produced = 0
        while produced < t_out:
            y = self.predict_block(x)
            if self.residual:
                y = y + x[:, -1:]
            blocks.append(y)
            produced += y.shape[1]
            if produced < t_out:
                x = torch.cat([x, y], dim=1)[:, -self.t_in:]
        y = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        return y[:, :t_out]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x: [..., H, W]`` edge-padded at the bottom and right up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    flat = F.pad(x.reshape(-1, 1, h, w), (0, pad_w, 0, pad_h), mode="replicate")
    return flat.reshape(*x.shape[:-2], h + pad_h, w + pad_w)


def run_padded(net: nn.Module, x: torch.Tensor, multiple: int, t_out: int | None = None,
               *, target: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """``net(x, t_out, target=target, **kwargs)`` with ``x`` and ``target`` padded by
    :func:`pad_to_multiple`, the output cropped back to ``x``'s ``H × W``.

    Training and forecasting both call networks through this, so a model sees
    the same padding (none when ``H`` and ``W`` are already multiples) in both.
    """
    h, w = x.shape[-2:]
    if target is not None:
        kwargs["target"] = pad_to_multiple(target, multiple)
    return net(pad_to_multiple(x, multiple), t_out, **kwargs)[..., :h, :w]
