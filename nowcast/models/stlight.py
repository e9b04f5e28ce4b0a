"""STLight (Alfarano et al., WACV 2025): spatio-temporal mixing with plain convolutions.

Time is folded into channels (frame-major), one patch convolution mixes
space and time, ``depth`` STLMixer blocks process the patch grid, and a
PixelShuffle plus a 1×1 conv reassemble the ``t_out`` frames.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DirectModel


class STLMixer(nn.Module):
    """x + BN(GELU(dw k2×k2 dil 3(dw k1×k1(x)))), then BN(GELU(1×1(·))) without residual."""

    def __init__(self, dim: int, k1: int = 3, k2: int = 7, dilation: int = 3) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, k1, padding=k1 // 2, groups=dim),
            nn.Conv2d(dim, dim, k2, padding=dilation * (k2 // 2), dilation=dilation, groups=dim),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        )
        self.channel = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x + self.spatial(x))


class STLight(DirectModel):
    """STLight nowcaster.

    Args: ``dim`` patch width d (divisible by ``patch ** 2``), ``depth``
    mixer blocks de, ``patch`` patch size and stride p (H, W divisible by
    it), ``k1``/``k2`` depthwise kernels. A long skip adds the input of block
    ``depth // 3`` to the input of block ``2 * depth // 3``. Encoder and mixer
    convolutions start from ``kaiming_normal_(mode="fan_out",
    nonlinearity="relu")`` as in the paper's hybrid model.
    """

    family = "stlight"

    def __init__(self, t_in: int, t_out: int, in_channels: int, dim: int = 800,
                 depth: int = 16, patch: int = 2, k1: int = 3, k2: int = 7) -> None:
        super().__init__(t_in, t_out, in_channels, dim=dim, depth=depth, patch=patch,
                         k1=k1, k2=k2)
        if dim % (patch * patch):
            raise ValueError("dim must be divisible by patch ** 2")
        self.patch = patch
        self.encoder = nn.Sequential(
            nn.Conv2d(t_in * in_channels, dim, patch, stride=patch),
            nn.BatchNorm2d(dim),
            nn.GELU(),
        )
        self.mixers = nn.ModuleList([STLMixer(dim, k1, k2) for _ in range(depth)])
        self.skip_from, self.skip_to = depth // 3, 2 * depth // 3
        self.unpatch = nn.PixelShuffle(patch)
        self.readout = nn.Conv2d(dim // (patch * patch), t_out * in_channels, 1)
        for m in [*self.encoder.modules(), *self.mixers.modules()]:  # the readout keeps the default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def size_multiple(self) -> int:
        return self.patch

    def predict_block(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"STLight needs H and W divisible by {self.patch}, got {h}x{w}")
        z = self.encoder(x.reshape(b, t * c, h, w))
        for i, mixer in enumerate(self.mixers):
            if i == self.skip_from:
                saved = z
            if i == self.skip_to and self.skip_to > self.skip_from:
                z = z + saved
            z = mixer(z)
        y = self.readout(self.unpatch(z))
        return y.reshape(b, self.t_out, c, h, w)
