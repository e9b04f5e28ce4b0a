"""Named presets, a builder and the paper losses.

``build("tau-radar")`` builds a preset, ``build("tau", **model.config)``
rebuilds a model from its configuration (the checkpoint round trip), and
``list_presets()`` describes every preset with its parameter count, the
published count and MACs and the training defaults of the paper or its
reference code. Figures we counted ourselves are marked ``recount``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import losses
from .base import SequenceModel
from .mslstm import MSLSTM
from .stlight import STLight
from .tau import TAU

FAMILIES: dict[str, type[SequenceModel]] = {"tau": TAU, "stlight": STLight, "mslstm": MSLSTM}

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tau": losses.tau_loss, "stlight": losses.mse, "mslstm": losses.l1_l2_per_frame,
}
#: Training losses by name: ``"paper"`` (each family's own, :data:`LOSSES`) or a deviation from it.
LOSS_NAMES = ("paper", "mse", "mae", "quantile")


@dataclass(frozen=True)
class TrainingDefaults:
    """How the paper (or its reference code, named in ``source``) trains the model."""

    optimizer: str
    lr: float
    schedule: str
    batch_size: int
    epochs: int
    warmup_epochs: int = 0
    scheduled_sampling: bool = False
    source: str = ""


@dataclass(frozen=True)
class Preset:
    """A named model configuration with the frame geometry it was made for."""

    family: str
    kwargs: dict[str, Any]
    height: int
    width: int
    published_parameters: int | None = None
    training: TrainingDefaults | None = None
    note: str = ""
    published_macs: float | None = None
    macs_without_depthwise: bool = False
    recount: bool = False


@dataclass(frozen=True)
class PresetInfo:
    """One row of :func:`list_presets`."""

    name: str
    family: str
    t_in: int
    t_out: int
    channels: int
    height: int
    width: int
    parameters: int
    published_parameters: int | None
    training: TrainingDefaults | None
    note: str = ""
    published_macs: float | None = None
    recount: bool = False


_OPENSTL_MMNIST = "OpenSTL configs/mmnist/TAU.py; 200 epochs is OpenSTL's benchmark length"
_MSRNN = "MS-RNN repository config.py (Adam 3e-4, batch 4 over 4 GPUs, linear scheduled sampling)"
_STLIGHT = ("STLight paper Table 2 (Adam, lr 3e-3; OneCycle, cosine for TaxiBJ) on the OpenSTL protocol; "
            "the authors' code is unpublished, so not checked line by line")
_RADAR_TAU = ("nowcast: TAU's optimiser; batch 8 keeps the saved activations near 11 GiB "
              "in fp32 on a 24 GB GPU (16 with bf16 autocast)")
_RADAR_STLIGHT = ("nowcast: STLight's optimiser; batch 16 keeps the saved activations near "
                  "8 GiB in fp32 on a 24 GB GPU")
_TINY = "nowcast: CPU-sized for tests and the demo, not a paper model"


def _tau_train(schedule: str, epochs: int, source: str, warmup: int = 0,
               batch: int = 16, lr: float = 1e-3) -> TrainingDefaults:
    return TrainingDefaults("adam", lr, schedule, batch, epochs, warmup, source=source)


def _stlight_train(epochs: int, batch: int = 16, source: str = _STLIGHT,
                   schedule: str = "onecycle") -> TrainingDefaults:
    return TrainingDefaults("adam", 3e-3, schedule, batch, epochs, source=source)


def _mslstm_train(epochs: int, batch: int = 4, lr: float = 3e-4,
                  source: str = _MSRNN) -> TrainingDefaults:
    return TrainingDefaults("adam", lr, "constant", batch, epochs, scheduled_sampling=True,
                            source=source)


def _io(t_in: int, t_out: int, c: int) -> dict[str, int]:
    return {"t_in": t_in, "t_out": t_out, "in_channels": c}


PRESETS: dict[str, Preset] = {
    # TAU (Tan et al., CVPR 2023), sizes from the paper / OpenSTL configs.
    "tau-taxibj": Preset(
        "tau", {**_io(4, 4, 2), "hid_s": 32, "hid_t": 256, "n_s": 2, "n_t": 8, "drop_path": 0.1},
        32, 32, 9_550_000,
        _tau_train("cosine", 50, "OpenSTL configs/taxibj/TAU.py", warmup=5, lr=5e-4),
        published_macs=2.49e9),
    "tau-mmnist": Preset(
        "tau", {**_io(10, 10, 1), "hid_s": 64, "hid_t": 512, "n_s": 4, "n_t": 8},
        64, 64, 44_700_000, _tau_train("onecycle", 200, _OPENSTL_MMNIST), published_macs=16.0e9),
    "tau-radar": Preset(
        "tau", {**_io(12, 12, 1), "hid_s": 64, "hid_t": 512, "n_s": 4, "n_t": 8, "drop_path": 0.1},
        128, 128, None,
        _tau_train("onecycle", 100, _RADAR_TAU, batch=8),
        "the Moving MNIST network on 12 radar frames of 128 x 128"),
    "tau-tiny": Preset(
        "tau", {**_io(8, 4, 1), "hid_s": 8, "hid_t": 32, "n_s": 4, "n_t": 2},
        64, 64, None, _tau_train("onecycle", 10, _TINY, batch=4), _TINY),
    # STLight (Alfarano et al., WACV 2025).
    **{
        f"stlight-{size}-mmnist": Preset(
            "stlight", {**_io(10, 10, 1), "dim": dim, "depth": 16, "patch": 2}, 64, 64,
            published, _stlight_train(200))
        for size, dim, published in (("xs", 800, 11_100_000), ("s", 1000, 17_100_000),
                                     ("m", 1200, 24_300_000), ("l", 1400, 32_900_000))
    },
    **{
        f"stlight-{size}-taxibj": Preset(
            "stlight", {**_io(4, 4, 2), "dim": 256, "depth": depth, "patch": 1}, 32, 32,
            published, _stlight_train(50, schedule="cosine"),
            "ours: the paper gives only the parameter count; width 256 with this depth lands on it")
        for size, depth, published in (("s", 12, 990_000), ("m", 20, 1_650_000))
    },
    "stlight-l-taxibj": Preset(
        "stlight", {**_io(4, 4, 2), "dim": 512, "depth": 10, "patch": 1}, 32, 32, 2_960_000,
        _stlight_train(50, schedule="cosine"),
        "ours: the paper gives parameters and MACs, not d and de; d 512, de 10 fits both "
        "(d 256, de 36 fits the parameters only: 2.42 G MACs)",
        published_macs=2.71e9, macs_without_depthwise=True),
    "stlight-radar": Preset(
        "stlight", {**_io(12, 12, 1), "dim": 1024, "depth": 16, "patch": 4}, 128, 128, None,
        _stlight_train(100, source=_RADAR_STLIGHT),
        "4 x 4 patches keep the 32 x 32 token grid of the Moving MNIST models at 128 x 128"),
    "stlight-tiny": Preset(
        "stlight", {**_io(8, 4, 1), "dim": 64, "depth": 4, "patch": 4}, 64, 64, None,
        _stlight_train(10, batch=4, source=_TINY), _TINY),
    # MS-LSTM (Ma, Zhang & Liu, 2023).
    "mslstm-mmnist": Preset(
        "mslstm", {**_io(10, 10, 1), "hidden": 64}, 64, 64, 7_576_897, _mslstm_train(20),
        "the parameter count is our recount of the reference code (MS-RNN), not a figure of the paper",
        recount=True),
    "mslstm-taxibj": Preset(
        "mslstm", {**_io(4, 4, 2), "hidden": 64}, 32, 32, None, _mslstm_train(20)),
    "mslstm-radar": Preset(
        "mslstm", {**_io(12, 12, 1), "hidden": 64}, 128, 128, None,
        _mslstm_train(30, source=_MSRNN + "; 30 epochs as for HKO-7; batch 4 is about "
                      "14 GiB of saved activations in fp32"),
        "paper width; recurrent over 23 steps, so the batch is small"),
    "mslstm-tiny": Preset(
        "mslstm", {**_io(8, 4, 1), "hidden": 8}, 64, 64, None,
        _mslstm_train(10, lr=1e-3, source=_TINY), _TINY),
}


def build(name: str, frame: str = "eulerian", **overrides: Any) -> SequenceModel:
    """Build a preset (``"tau-radar"``) or a family (``"tau"``) with keyword overrides.

    ``frame``: ``eulerian`` or ``lagrangian`` (:data:`nowcast.models.base.FRAMES`).
    ``build(model.preset or model.family, **model.config)`` rebuilds ``model``.
    """
    if name in PRESETS:
        preset = PRESETS[name]
        model = FAMILIES[preset.family](**{**preset.kwargs, **overrides}).set_frame(frame)
        model.preset = name
        return model
    if name in FAMILIES:
        return FAMILIES[name](**overrides).set_frame(frame)
    raise KeyError(f"unknown model {name!r}; families: {sorted(FAMILIES)}, "
                   f"presets: {sorted(PRESETS)}")


def family_of(name_or_model: str | nn.Module) -> str:
    """The family (``"tau"``, ``"stlight"``, ``"mslstm"``) of a preset, family or model."""
    if isinstance(name_or_model, SequenceModel):
        return name_or_model.family
    if name_or_model in FAMILIES:
        return name_or_model
    if name_or_model in PRESETS:
        return PRESETS[name_or_model].family
    raise KeyError(f"unknown model {name_or_model!r}")


def paper_loss(name_or_model: str | nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The paper's loss ``(pred, target) -> scalar``: TAU MSE + 0.1·DDR, STLight MSE,
    MS-LSTM per-frame summed L1 + L2."""
    return LOSSES[family_of(name_or_model)]


def check_loss(loss: str, quantile: float | None = None) -> None:
    """Raise ValueError unless ``loss`` is in :data:`LOSS_NAMES` and ``quantile`` is given, in (0, 1),
    exactly when ``loss`` is ``"quantile"``."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {list(LOSS_NAMES)}")
    if loss == "quantile" and not (quantile is not None and 0 < quantile < 1):
        raise ValueError(f"loss 'quantile' needs a quantile in (0, 1), e.g. 0.6; got {quantile}")
    if loss != "quantile" and quantile is not None:
        raise ValueError(f"a quantile ({quantile}) is for loss 'quantile' only, not {loss!r} (drop it)")


def training_loss(name_or_model: str | nn.Module, loss: str = "paper", quantile: float | None = None
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss named ``loss`` (:data:`LOSS_NAMES`): the paper's (:func:`paper_loss`), plain MSE or MAE,
    or the pinball loss at ``quantile`` (:func:`nowcast.models.losses.quantile`)."""
    check_loss(loss, quantile)
    if loss == "paper":
        return paper_loss(name_or_model)
    if loss == "quantile":
        return partial(losses.quantile, q=quantile)
    return getattr(losses, loss)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def forward_flops(name: str) -> tuple[float, float]:
    """Forward FLOPs of one sample of preset ``name``, and the part of them in depthwise convolutions.

    ``FlopCounterMode`` on the meta device; multiply and add count apart, so
    MACs (what papers quoting fvcore/thop call FLOPs) are half of these.
    """
    p = PRESETS[name]
    depthwise = 0

    def hook(module: nn.Conv2d, _inputs, output) -> None:
        nonlocal depthwise
        depthwise += 2 * output.numel() * module.kernel_size[0] * module.kernel_size[1]

    with torch.device("meta"):
        model = build(name).eval()
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                m.register_forward_hook(hook)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, p.kwargs["t_in"], p.kwargs["in_channels"], p.height, p.width))
    return float(counter.get_total_flops()), float(depthwise)


def macs(name: str) -> float:
    """Forward MACs of one sample, counted as the paper does (without depthwise convolutions for STLight)."""
    flops, depthwise = forward_flops(name)
    return (flops - depthwise if PRESETS[name].macs_without_depthwise else flops) / 2


@lru_cache(maxsize=None)
def _preset_parameters(name: str) -> int:
    with torch.device("meta"):
        return parameter_count(build(name))


def list_presets() -> list[PresetInfo]:
    """Every preset with its geometry, computed and published size and training defaults."""
    rows = []
    for name, p in PRESETS.items():
        k = p.kwargs
        rows.append(PresetInfo(
            name, p.family, k["t_in"], k["t_out"], k["in_channels"], p.height, p.width,
            _preset_parameters(name), p.published_parameters, p.training, p.note, p.published_macs, p.recount))
    return rows
