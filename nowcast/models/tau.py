"""TAU: Temporal Attention Unit in the SimVP framework (Tan et al., CVPR 2023).

Per-frame convolutional encoder, a translator of MetaFormer-style TAU blocks
acting on time folded into channels, and a mirrored decoder. Initialisation
and the drop-path schedule follow the reference code (OpenSTL): encoder and
decoder convolutions truncated normal (std 0.02); in each TAU block the MLP
fan-out normal, while the attention branch keeps PyTorch's default, since
OpenSTL's ``TAUSubBlock`` swaps it in after its parent's initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DirectModel


class DropPath(nn.Module):
    """Stochastic depth: zero whole samples of a residual branch with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ConvNormAct(nn.Module):
    """3×3 conv (stride 2 to go down; ×4 channels + PixelShuffle(2) to go up) → GroupNorm(2) → SiLU."""

    def __init__(self, c_in: int, c_out: int, down: bool = False, up: bool = False) -> None:
        super().__init__()
        if up:
            self.conv = nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv = nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=1)
        self.norm = nn.GroupNorm(2, c_out)
        self.act = nn.SiLU()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _downsamples(n_s: int) -> list[bool]:
    """Stride 2 on every second encoder block (the first keeps full resolution)."""
    return [i % 2 == 1 for i in range(n_s)]


class Encoder(nn.Module):
    """``[N, C, H, W]`` -> latent ``[N, hid, H/2^k, W/2^k]`` and the first block's output (skip)."""

    def __init__(self, c_in: int, hid: int, n_s: int) -> None:
        super().__init__()
        downs = _downsamples(n_s)
        self.blocks = nn.ModuleList(
            [ConvNormAct(c_in if i == 0 else hid, hid, down=d) for i, d in enumerate(downs)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.blocks[0](x)
        z = skip
        for block in self.blocks[1:]:
            z = block(z)
        return z, skip


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`; adds the skip before its last block, then a 1×1 readout."""

    def __init__(self, hid: int, c_out: int, n_s: int) -> None:
        super().__init__()
        ups = _downsamples(n_s)[::-1]
        self.blocks = nn.ModuleList([ConvNormAct(hid, hid, up=u) for u in ups])
        self.readout = nn.Conv2d(hid, c_out, 1)

    def forward(self, z: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[:-1]:
            z = block(z)
        return self.readout(self.blocks[-1](z + skip))


class TemporalAttentionModule(nn.Module):
    """TAM(u) = statical(u) ⊙ dynamical(u) ⊙ u.

    Statical: depthwise 5×5 → depthwise 7×7 dilation 3 → 1×1 (intra-frame).
    Dynamical: squeeze-and-excitation over channels (inter-frame), hidden
    width ``dim // max(dim // 16, 4)`` (16 for ``dim >= 64``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.dw7d3 = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)
        hidden = dim // max(dim // 16, 4)
        self.se = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, dim, bias=False), nn.Sigmoid(),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        statical = self.pw(self.dw7d3(self.dw5(u)))
        dynamical = self.se(u.mean(dim=(2, 3)))[:, :, None, None]
        return statical * dynamical * u


class TemporalAttention(nn.Module):
    """x + 1×1(TAM(GELU(1×1(x))))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.tam = TemporalAttentionModule(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.tam(self.act(self.proj_in(x))))


class ConvMLP(nn.Module):
    """1×1 expand → depthwise 3×3 → GELU → 1×1."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


class TAUBlock(nn.Module):
    """MetaFormer block: x + γ₁·DropPath(TA(BN(x))), then x + γ₂·DropPath(MLP(BN(x))).

    With ``dim_out != dim`` a 1×1 conv follows to switch the channel count.
    """

    def __init__(self, dim: int, dim_out: int, mlp_ratio: float, drop_path: float,
                 layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = TemporalAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.gamma1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.mlp.apply(_init_fan_out)
        self.reduction = nn.Conv2d(dim, dim_out, 1) if dim_out != dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        return self.reduction(x)


def _init_fan_out(m: nn.Module) -> None:
    """OpenSTL's conv init: normal with std sqrt(2 / fan_out), fan_out per group; zero bias."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(m.bias)


def drop_path_rates(n_t: int, drop_path: float) -> list[float]:
    """Per-block rates as in OpenSTL: linear from 0.01 to ``drop_path``, the last block ``drop_path``."""
    if n_t == 1:
        return [drop_path]
    step = (drop_path - 0.01) / (n_t - 1)
    return [0.01 + step * i for i in range(n_t - 1)] + [drop_path]


class TAU(DirectModel):
    """TAU nowcaster; predicts ``t_in`` frames per block (SimVP keeps the frame count).

    Args: ``hid_s`` encoder width, ``hid_t`` translator width, ``n_s`` encoder
    (and decoder) blocks, ``n_t`` TAU blocks (>= 2), ``mlp_ratio`` MLP
    expansion, ``drop_path`` stochastic-depth rate. ``H`` and ``W`` must be
    divisible by ``2 ** (n_s // 2)``.
    """

    family = "tau"

    def __init__(self, t_in: int, t_out: int, in_channels: int, hid_s: int = 16,
                 hid_t: int = 256, n_s: int = 4, n_t: int = 8, mlp_ratio: float = 8.0,
                 drop_path: float = 0.0) -> None:
        super().__init__(t_in, t_out, in_channels, hid_s=hid_s, hid_t=hid_t, n_s=n_s,
                         n_t=n_t, mlp_ratio=mlp_ratio, drop_path=drop_path)
        if n_t < 2 or n_s < 1:
            raise ValueError("TAU needs n_t >= 2 and n_s >= 1")
        self.scale = 2 ** (n_s // 2)
        self.encoder = Encoder(in_channels, hid_s, n_s)
        folded = t_in * hid_s
        dims = [folded] + [hid_t] * (n_t - 1) + [folded]
        self.translator = nn.Sequential(*[
            TAUBlock(dims[i], dims[i + 1], mlp_ratio, rate)
            for i, rate in enumerate(drop_path_rates(n_t, drop_path))
        ])
        self.decoder = Decoder(hid_s, in_channels, n_s)

    @property
    def readout_layer(self) -> nn.Conv2d:
        return self.decoder.readout

    @property
    def size_multiple(self) -> int:
        return self.scale

    def predict_block(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"TAU needs H and W divisible by {self.scale}, got {h}x{w}")
        z, skip = self.encoder(x.reshape(b * t, c, h, w))
        hid, hh, ww = z.shape[1:]
        z = self.translator(z.reshape(b, t * hid, hh, ww))
        y = self.decoder(z.reshape(b * t, hid, hh, ww), skip)
        return y.reshape(b, t, c, h, w)
