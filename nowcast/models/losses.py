"""Training losses of the papers; all take ``pred, target: [B, T, C, H, W]`` and return a scalar.

They compute in float32 whatever the input dtype (safe under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (STLight)."""
    return F.mse_loss(pred.float(), target.float())


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (not a paper loss: the ``loss="mae"`` option).

    Its minimiser is the conditional median, which a monotonic scaler (dBR,
    log1p, min-max) maps to the median in physical units: the forecast that
    minimises MAE there, where MSE's conditional mean blurs rain edges.
    """
    return F.l1_loss(pred.float(), target.float())


def quantile(pred: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    """Pinball (quantile) loss at quantile ``q`` in (0, 1), doubled so that ``q=0.5`` is :func:`mae`
    (not a paper loss: the ``loss="quantile"`` option).

    Its minimiser is the conditional ``q``-quantile, which a monotonic scaler
    maps to the same quantile in physical units. Above the median it widens
    the forecast rain area that a median forecast shrinks at longer leads:
    CSI rewards forecasting rain wherever its probability exceeds
    CSI / (1 + CSI), below the median's 1/2.
    """
    err = target.float() - pred.float()
    return 2 * torch.maximum(q * err, (q - 1) * err).mean()


def differential_divergence(pred: torch.Tensor, target: torch.Tensor,
                            tau: float = 0.1) -> torch.Tensor:
    """TAU's differential divergence regularisation (DDR).

    Forward frame differences ``[B, T-1, C·H·W]`` become distributions by a
    softmax at temperature ``tau``; returns KL(pred ‖ target) averaged over
    all elements. Zero when ``T <= 2``, as in OpenSTL.
    """
    b, t = pred.shape[:2]
    if t <= 2:
        return pred.new_zeros((), dtype=torch.float32)
    dp = (pred[:, 1:] - pred[:, :-1]).float().reshape(b, t - 1, -1) / tau
    dt = (target[:, 1:] - target[:, :-1]).float().reshape(b, t - 1, -1) / tau
    log_p = F.log_softmax(dp, dim=-1)
    log_q = F.log_softmax(dt, dim=-1)
    return (log_p.exp() * (log_p - log_q)).mean()


def tau_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.1,
             tau: float = 0.1) -> torch.Tensor:
    """MSE + ``alpha`` · DDR (TAU)."""
    return mse(pred, target) + alpha * differential_divergence(pred, target, tau)


def l1_l2_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per frame, the summed absolute plus summed squared error over C, H, W; mean over B, T (MS-LSTM)."""
    err = pred.float() - target.float()
    per_frame = err.abs().sum(dim=(2, 3, 4)) + err.square().sum(dim=(2, 3, 4))
    return per_frame.mean()
