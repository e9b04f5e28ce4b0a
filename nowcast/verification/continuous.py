"""Continuous verification: mean error, MAE, RMSE and Pearson correlation.

Accumulated as sums over valid cells (float64), so sums of many cases merge
by addition; scores come from the merged sums. Over space (``dims=("y",
"x")``) this gives the usual per-lead scores; over cases only (``dims=()``)
it gives per-cell error maps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from nowcast.verification.align import valid_mask

SUMS = ("n", "sum_error", "sum_abs_error", "sum_sq_error",
        "sum_fc", "sum_ob", "sum_fc_sq", "sum_ob_sq", "sum_fc_ob")
SCORES = ("me", "mae", "rmse", "corr")


def error_sums(fc: xr.DataArray, ob: xr.DataArray, dims: Sequence[str] = ("y", "x")) -> xr.Dataset:
    """Sums of errors and moments over ``dims`` (cells where either field is NaN left out).

    Args:
        fc, ob: forecast and observed fields with the same dims; a forecast
            ensemble should be reduced (e.g. to its mean) first.
        dims: dims to sum over; the others are kept.

    Returns:
        Dataset with ``n`` (valid cells, int64) and float64 sums
        ``sum_error`` (f - o), ``sum_abs_error``, ``sum_sq_error``, ``sum_fc``,
        ``sum_ob``, ``sum_fc_sq``, ``sum_ob_sq``, ``sum_fc_ob``.
    """
    valid = valid_mask(fc, ob)
    # Zero outside the valid cells, so plain sums skip them.
    f = fc.astype("f8").where(valid, 0.0)
    o = ob.astype("f8").where(valid, 0.0)
    err = f - o
    dims = list(dims)
    terms = {"sum_error": err, "sum_abs_error": abs(err), "sum_sq_error": err ** 2,
             "sum_fc": f, "sum_ob": o, "sum_fc_sq": f ** 2, "sum_ob_sq": o ** 2, "sum_fc_ob": f * o}
    out = {name: term.sum(dims, skipna=False) for name, term in terms.items()}
    out["n"] = valid.sum(dims, dtype="i8")
    return xr.Dataset(out)


def continuous_scores(sums: xr.Dataset) -> xr.Dataset:
    """ME (bias), MAE, RMSE and Pearson correlation from :func:`error_sums` (merged or not).

    Units of ME, MAE and RMSE are those of the fields; NaN where ``n`` is 0
    (and correlation NaN where either field is constant).
    """
    n = sums["n"].astype("f8").where(sums["n"] > 0)
    mean_fc, mean_ob = sums["sum_fc"] / n, sums["sum_ob"] / n
    cov = sums["sum_fc_ob"] / n - mean_fc * mean_ob
    var_fc = sums["sum_fc_sq"] / n - mean_fc ** 2
    var_ob = sums["sum_ob_sq"] / n - mean_ob ** 2
    den = np.sqrt(var_fc * var_ob)
    out = xr.Dataset({
        "me": sums["sum_error"] / n,
        "mae": sums["sum_abs_error"] / n,
        "rmse": np.sqrt(sums["sum_sq_error"] / n),
        "corr": cov / den.where(den > 0),
    })
    for name, long_name in zip(SCORES, ("mean error (forecast - observation)", "mean absolute error",
                                        "root mean squared error", "Pearson correlation")):
        out[name].attrs["long_name"] = long_name
    out["corr"].attrs["units"] = "1"
    return out
