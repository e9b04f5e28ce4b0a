"""What every nowcasting network shares: shapes, metadata and rollout.

A network maps ``x: [B, T_in, C, H, W]`` to ``[B, T_out, C, H, W]`` and
remembers the keyword arguments it was built with in ``config`` (JSON-safe),
so that ``nowcast.models.build(model.family, **model.config)`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SequenceModel(nn.Module):
    """Base class: ``t_in``, ``t_out``, ``in_channels``, ``config``, ``preset``."""

    family: str = ""

    def __init__(self, t_in: int, t_out: int, in_channels: int, **hyper: Any) -> None:
        super().__init__()
        if min(t_in, t_out, in_channels) < 1:
            raise ValueError("t_in, t_out and in_channels must be positive")
        self.t_in = int(t_in)
        self.t_out = int(t_out)
        self.in_channels = int(in_channels)
        self.config: dict[str, Any] = {
            "t_in": self.t_in, "t_out": self.t_out, "in_channels": self.in_channels, **hyper,
        }
        self.preset: str | None = None

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
            blocks.append(y)
            produced += y.shape[1]
            if produced < t_out:
                x = torch.cat([x, y], dim=1)[:, -self.t_in:]
        y = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        return y[:, :t_out]
