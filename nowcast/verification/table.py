"""Scores as a tidy table: one row per method, lead time, metric, threshold and scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.verification import categorical, continuous, images
from nowcast.verification.align import LEAD

# Scores with one value per lead (and threshold / FSS scale); the curves
# (spectra, rank histograms, reliability) stay in the NetCDF and the plots.
TABLE_METRICS = (categorical.SCORES + continuous.SCORES + ("fss",) + images.SCORES + ("crps", "brier"))
COLUMNS = ["method", "lead_min", "metric", "threshold", "scale_km", "value"]


def scores_table(scores: xr.Dataset, method: str | None = None) -> pd.DataFrame:
    """Tidy table of the per-lead scores in ``scores`` (computes lazy inputs).

    Args:
        scores: from :func:`~nowcast.verification.score.score_forecast` or
            :func:`~nowcast.verification.score.finalize`, optionally with a
            ``method`` dim (several methods side by side).
        method: label for the ``method`` column when ``scores`` has no
            ``method`` dim; defaults to its ``source`` attribute.

    Returns:
        DataFrame with columns ``method, lead_min, metric, threshold,
        scale_km, value``; ``threshold``/``scale_km`` are NaN for scores
        without them. Rows are sorted by method, metric, threshold, scale, lead.
    """
    names = [name for name in TABLE_METRICS if name in scores]
    if not names:
        return pd.DataFrame(columns=COLUMNS)
    scores = scores[names].compute()
    frames = []
    for name in names:
        da = scores[name]
        df = da.drop_vars([c for c in da.coords if c not in da.dims]).to_dataframe(name="value").reset_index()
        df["metric"] = name
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)
    if "method" not in table:
        table["method"] = method or scores.attrs.get("source", "forecast")
    lead = pd.to_timedelta(table[LEAD]) / pd.Timedelta(minutes=1)
    table["lead_min"] = lead.astype(int) if (lead % 1 == 0).all() else lead
    table = table.rename(columns={"scale": "scale_km"})
    for column in ("threshold", "scale_km"):
        if column not in table:
            table[column] = np.nan
    table = table[COLUMNS].sort_values(["method", "metric", "threshold", "scale_km", "lead_min"], na_position="first")
    return table.reset_index(drop=True)
