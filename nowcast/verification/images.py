"""Image-quality scores per frame: SSIM, PSNR and OpenSTL's per-frame error sums.

Video-prediction papers score a forecast frame by frame and average over
frames. Here a frame is one lead time of one case (all ``flow`` channels
together); per-frame values are summed with a frame count, so cases merge by
addition and the means are per lead.

* SSIM: Wang et al. (2004) as :func:`skimage.metrics.structural_similarity`
  computes it by default (7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariance, borders of half a window left out, channels averaged) and
  equal to it on complete fields; windows touching a NaN are left out.
* PSNR: ``10 log10(data_range² / MSE)`` with the frame's mean squared error.
* OpenSTL convention (to compare with its published tables): MSE and MAE
  *summed* over C·H·W in each frame, then averaged over frames.

``data_range`` is always explicit: the span the fields are scaled to (e.g.
1.0 for fields normalised to [0, 1], or a rain-rate cap in mm/h).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.ndimage import uniform_filter

from nowcast.verification.align import spatial_whole, valid_mask

FRAME_SUMS = ("ssim_sum", "psnr_sum", "frame_sq_error_sum", "frame_abs_error_sum", "frames")
SCORES = ("ssim", "psnr", "mse_frame", "mae_frame")
SSIM_WINDOW = 7
_K1, _K2 = 0.01, 0.03


def frame_dims(da: xr.DataArray) -> list[str]:
    """The dims that make one frame: ``[flow], y, x``."""
    return [d for d in ("flow", "y", "x") if d in da.dims]


def ssim(fc: xr.DataArray, ob: xr.DataArray, data_range: float, window: int = SSIM_WINDOW) -> xr.DataArray:
    """Mean structural similarity of each frame (channels averaged), dims without ``[flow], y, x``."""
    valid = valid_mask(fc, ob)
    args = [spatial_whole(a) for a in (fc.astype("f8").where(valid, 0.0), ob.astype("f8").where(valid, 0.0), valid)]
    per_channel = xr.apply_ufunc(
        _mean_ssim, *args, input_core_dims=[["y", "x"]] * 3,
        kwargs={"data_range": float(data_range), "window": int(window)},
        dask="parallelized", output_dtypes=["f8"])
    return per_channel.mean("flow") if "flow" in per_channel.dims else per_channel


def _mean_ssim(x: np.ndarray, y: np.ndarray, valid: np.ndarray, *, data_range: float, window: int) -> np.ndarray:
    """(..., m, n) → (...): SSIM map averaged over interior windows that are fully valid."""
    size = (1,) * (x.ndim - 2) + (window, window)

    def mean(a):
        return uniform_filter(a, size=size, mode="reflect")

    ux, uy = mean(x), mean(y)
    cov_norm = window ** 2 / (window ** 2 - 1.0)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ssim_map = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    ok = mean(valid.astype("f8")) > 1.0 - 1e-9
    pad = (window - 1) // 2
    inner = (Ellipsis, slice(pad, x.shape[-2] - pad), slice(pad, x.shape[-1] - pad))
    ssim_map, ok = ssim_map[inner], ok[inner]
    count = ok.sum(axis=(-2, -1))
    total = np.where(ok, ssim_map, 0.0).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def frame_sums(fc: xr.DataArray, ob: xr.DataArray, data_range: float | None) -> xr.Dataset:
    """Per-frame SSIM, PSNR and OpenSTL error sums, summed over frames of ``fc`` (one per lead here).

    Args:
        fc, ob: forecast and observed fields ``(lead, [flow], y, x)``.
        data_range: span of the data for SSIM and PSNR; None leaves both out.

    Returns:
        Dataset with ``frame_sq_error_sum``, ``frame_abs_error_sum``,
        ``frames`` and, with a data range, ``ssim_sum`` and ``psnr_sum``;
        dims: the non-frame dims of ``fc`` (e.g. the lead).
    """
    dims = frame_dims(fc)
    valid = valid_mask(fc, ob)
    err = (fc.astype("f8") - ob.astype("f8")).where(valid)
    sse = (err ** 2).sum(dims)
    out = {
        "frame_sq_error_sum": sse,
        "frame_abs_error_sum": abs(err).sum(dims),
        "frames": xr.ones_like(sse, dtype="i8"),
    }
    if data_range is not None:
        mse = sse / valid.sum(dims).where(lambda n: n > 0)
        with np.errstate(divide="ignore"):
            out["psnr_sum"] = 10.0 * np.log10(float(data_range) ** 2 / mse)
        out["ssim_sum"] = ssim(fc, ob, data_range)
    return xr.Dataset(out)


def image_scores(sums: xr.Dataset) -> xr.Dataset:
    """Frame means: ``ssim``, ``psnr`` (dB) and OpenSTL's ``mse_frame``, ``mae_frame``."""
    frames = sums["frames"].where(sums["frames"] > 0)
    out = xr.Dataset({
        "mse_frame": (sums["frame_sq_error_sum"] / frames).assign_attrs(
            long_name="squared error summed over each frame (C*H*W), mean over frames (OpenSTL MSE)"),
        "mae_frame": (sums["frame_abs_error_sum"] / frames).assign_attrs(
            long_name="absolute error summed over each frame (C*H*W), mean over frames (OpenSTL MAE)"),
    })
    if "ssim_sum" in sums:
        out["ssim"] = (sums["ssim_sum"] / frames).assign_attrs(long_name="structural similarity", units="1")
        out["psnr"] = (sums["psnr_sum"] / frames).assign_attrs(long_name="peak signal-to-noise ratio", units="dB")
    return out
