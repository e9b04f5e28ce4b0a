"""Verification of gridded forecasts: xarray in, xarray out, lazy on dask.

Modules by kind of score: ``categorical`` (contingency tables, POD, FAR,
CSI, ETS, HSS, bias), ``continuous`` (ME, MAE, RMSE, correlation),
``spatial`` (FSS, power spectra), ``images`` (SSIM, PSNR, OpenSTL's
per-frame errors), ``probabilistic`` (CRPS, rank histogram, reliability).
Each accumulates mergeable sums and computes scores from them; ``metrics``
wraps them as objects, ``score`` runs them over whole forecasts aligned with
observations by valid time and indexed by lead time, ``table`` makes the
tidy table and ``report`` writes tables, plots and a report for many
forecasts.
"""

from nowcast.verification.align import LEAD, VerificationError, align, common_support, support_mask
from nowcast.verification.categorical import categorical_scores, contingency_categories, contingency_table
from nowcast.verification.continuous import continuous_scores, error_sums
from nowcast.verification.images import ssim
from nowcast.verification.report import VerifyOptions, aggregate, case_supports, score_case, verify_forecasts
from nowcast.verification.probabilistic import (crps_sums, probabilistic_scores, rank_histogram_sums,
                                                reliability_sums)
from nowcast.verification.score import (DEFAULT_THRESHOLDS, accumulate, default_metrics, error_map, finalize,
                                        merge, score_forecast)
from nowcast.verification.spatial import fss_scores, fss_sums, rapsd, scale_cells
from nowcast.verification.table import scores_table

__all__ = [
    "LEAD", "VerificationError", "align", "common_support", "support_mask",
    "contingency_table", "categorical_scores", "contingency_categories",
    "error_sums", "continuous_scores", "ssim",
    "crps_sums", "rank_histogram_sums", "reliability_sums", "probabilistic_scores",
    "fss_sums", "fss_scores", "rapsd", "scale_cells",
    "DEFAULT_THRESHOLDS", "default_metrics", "accumulate", "merge", "finalize", "score_forecast", "error_map",
    "scores_table", "VerifyOptions", "case_supports", "score_case", "aggregate", "verify_forecasts",
]
