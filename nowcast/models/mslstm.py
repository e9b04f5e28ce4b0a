"""MS-LSTM (Ma, Zhang & Liu, 2023): multi-scale stack of multi-kernel LSTM cells.

Each frame is embedded by a 1×1 conv; six MK-LSTM cells run at resolutions
H, H/2, H/4, H/4, H/2, H (max-pool down, bilinear up, hidden outputs of the
first two cells added to the inputs of the mirrored upper cells); a 1×1 conv
reads the next frame out. The network steps one frame at a time through the
input phase and then autoregressively through the output phase, optionally
with scheduled sampling of the true frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequenceModel

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
GateWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class MKLSTMCell(nn.Module):
    """Multi-kernel LSTM cell: gates from 3×3 and 5×5 convs, one cell state per kernel.

    ``x, (h, c3, c5)`` (all ``[B, hidden, H, W]``) -> ``h', (h', c3', c5')``.
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.x3 = nn.Conv2d(in_channels, 4 * hidden, 3, padding=1)
        self.h3 = nn.Conv2d(hidden, 4 * hidden, 3, padding=1)
        self.x5 = nn.Conv2d(in_channels, 4 * hidden, 5, padding=2)
        self.h5 = nn.Conv2d(hidden, 4 * hidden, 5, padding=2)
        self.c3_to_o = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.c5_to_o = nn.Conv2d(hidden, hidden, 5, padding=2)
        self.out = nn.Conv2d(2 * hidden, hidden, 1)

    def gate_weights(self) -> GateWeights:
        """The x- and h-convs of each kernel merged into one conv over ``[x; h]``.

        Same maths and parameters as separate convs, half the kernel launches;
        compute once per sequence and pass to :meth:`forward`.
        """
        return (torch.cat([self.x3.weight, self.h3.weight], dim=1), self.x3.bias + self.h3.bias,
                torch.cat([self.x5.weight, self.h5.weight], dim=1), self.x5.bias + self.h5.bias)

    def forward(self, x: torch.Tensor, state: State,
                weights: GateWeights | None = None) -> tuple[torch.Tensor, State]:
        h, c3, c5 = state
        w3, b3, w5, b5 = self.gate_weights() if weights is None else weights
        xh = torch.cat([x, h], dim=1)
        i3, f3, g3, o3 = F.conv2d(xh, w3, b3, padding=1).chunk(4, dim=1)
        i5, f5, g5, o5 = F.conv2d(xh, w5, b5, padding=2).chunk(4, dim=1)
        c3 = torch.sigmoid(f3) * c3 + torch.sigmoid(i3) * torch.tanh(g3)
        c5 = torch.sigmoid(f5) * c5 + torch.sigmoid(i5) * torch.tanh(g5)
        o = torch.sigmoid(o3 + o5 + self.c3_to_o(c3) + self.c5_to_o(c5))
        h = o * torch.tanh(self.out(torch.cat([c3, c5], dim=1)))
        return h, (h, c3, c5)


#: Downsampling exponent of each of the six cells: H, H/2, H/4, H/4, H/2, H.
LEVELS = (0, 1, 2, 2, 1, 0)


class MSLSTM(SequenceModel):
    """MS-LSTM nowcaster; any number of input frames, ``H`` and ``W`` divisible by 4.

    Args: ``hidden`` channels of the embedding and of every cell (64 in the paper).
    """

    family = "mslstm"

    def __init__(self, t_in: int, t_out: int, in_channels: int, hidden: int = 64) -> None:
        super().__init__(t_in, t_out, in_channels, hidden=hidden)
        self.hidden = hidden
        self.embed = nn.Conv2d(in_channels, hidden, 1)
        self.cells = nn.ModuleList([MKLSTMCell(hidden, hidden) for _ in LEVELS])
        self.readout = nn.Conv2d(hidden, in_channels, 1)

    @property
    def size_multiple(self) -> int:
        return 2 ** max(LEVELS)

    def initial_state(self, x: torch.Tensor) -> list[State]:
        """Zero states for a batch like ``x: [B, T, C, H, W]``, one per cell."""
        b, _, _, h, w = x.shape
        states = []
        for level in LEVELS:
            zeros = x.new_zeros(b, self.hidden, h >> level, w >> level)
            states.append((zeros, zeros, zeros))
        return states

    def step(self, frame: torch.Tensor, states: list[State],
             weights: list[GateWeights] | None = None) -> tuple[torch.Tensor, list[State]]:
        """One frame ``[B, C, H, W]`` -> top hidden output ``[B, hidden, H, W]`` and new states."""
        weights = [cell.gate_weights() for cell in self.cells] if weights is None else weights
        z = self.embed(frame)
        outputs, new_states = [], []
        for i, (cell, state, w) in enumerate(zip(self.cells, states, weights)):
            z, state = cell(z, state, w)
            outputs.append(z)
            new_states.append(state)
            if i in (0, 1):
                z = F.max_pool2d(z, 2)
            elif i in (3, 4):
                z = F.interpolate(z, scale_factor=2.0, mode="bilinear") + outputs[4 - i]
        return z, new_states

    def forward(
        self,
        x: torch.Tensor,
        t_out: int | None = None,
        *,
        target: torch.Tensor | None = None,
        sampling_ratio: float | torch.Tensor = 0.0,
        input_phase: bool = False,
    ) -> torch.Tensor:
        """``[B, T, C, H, W]`` -> ``[B, t_out, C, H, W]``.

        In the output phase each input frame is the previous prediction, or,
        with ``target: [B, >= t_out - 1, C, H, W]``, the true frame with
        probability ``sampling_ratio`` (one Bernoulli draw per sample and step).
        ``input_phase=True`` also returns the one-step predictions of input
        frames 2..T made during the input phase: ``[B, T - 1 + t_out, C, H, W]``,
        all S - 1 outputs the reference code (MS-RNN) trains on.
        """
        self._check_input(x, fixed_length=False)
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(f"MS-LSTM needs H and W divisible by {self.size_multiple}, "
                             f"got {tuple(x.shape[-2:])}")
        t_out = self.t_out if t_out is None else int(t_out)
        t_in = x.shape[1]
        teacher = target is not None and not (
            isinstance(sampling_ratio, (int, float)) and sampling_ratio <= 0)
        states = self.initial_state(x)
        weights = [cell.gate_weights() for cell in self.cells]
        preds: list[torch.Tensor] = []
        for t in range(t_in + t_out - 1):
            if t < t_in:
                frame = x[:, t]
            elif teacher:
                truth = target[:, t - t_in].to(preds[-1].dtype)
                use_truth = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < sampling_ratio
                frame = torch.where(use_truth, truth, preds[-1])
            else:
                frame = preds[-1]
            z, states = self.step(frame, states, weights)
            if input_phase or t >= t_in - 1:
                preds.append(self.readout(z) + frame if self.residual else self.readout(z))
        return torch.stack(preds, dim=1)


def scheduled_sampling_ratio(step: int, total_steps: int) -> float:
    """Probability of feeding the true frame at ``step``: linear from 1 at step 0 to 0 at ``total_steps``."""
    if total_steps <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - step / total_steps))
