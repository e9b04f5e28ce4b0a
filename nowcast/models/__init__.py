"""Deep nowcasting networks: plain ``torch.nn.Module``s on ``[B, T, C, H, W]`` tensors.

Three families (TAU, STLight, MS-LSTM), named presets and the paper losses::

    model = build("tau-radar")            # or build("tau", t_in=12, t_out=12, ...)
    y = model(x)                          # [B, 12, 1, 128, 128] -> [B, 12, 1, 128, 128]
    loss = paper_loss(model)(y, target)
    clone = build(model.preset or model.family, **model.config)
    lagrangian = build("tau-tiny", frame="lagrangian")  # residual output, zero readout (FRAMES)

All share ``forward(x, t_out=None, *, target=None, sampling_ratio=0.0)``;
only MS-LSTM uses ``target``/``sampling_ratio`` (scheduled sampling, see
:func:`scheduled_sampling_ratio`).
"""

from .base import FRAMES, DirectModel, SequenceModel, pad_to_multiple, run_padded
from .losses import differential_divergence, l1_l2_per_frame, mae, mse, quantile, tau_loss
from .mslstm import MSLSTM, MKLSTMCell, scheduled_sampling_ratio
from .registry import (
    FAMILIES,
    LOSS_NAMES,
    PRESETS,
    Preset,
    PresetInfo,
    TrainingDefaults,
    build,
    check_loss,
    family_of,
    forward_flops,
    list_presets,
    macs,
    paper_loss,
    parameter_count,
    training_loss,
)
from .stlight import STLight, STLMixer
from .tau import TAU, TAUBlock

__all__ = [
    "FAMILIES", "FRAMES", "LOSS_NAMES", "MKLSTMCell", "MSLSTM", "PRESETS", "Preset", "PresetInfo", "STLMixer",
    "STLight", "SequenceModel", "DirectModel", "TAU", "TAUBlock", "TrainingDefaults", "build", "check_loss",
    "differential_divergence", "family_of", "forward_flops", "l1_l2_per_frame", "list_presets", "macs", "mae", "mse",
    "pad_to_multiple", "paper_loss", "parameter_count", "quantile", "run_padded", "scheduled_sampling_ratio",
    "tau_loss", "training_loss",
]
