"""Ensemble verification: CRPS, rank histogram, reliability and Brier score.

Forecasts carry members along ``realization``. Every score is accumulated as
sums (with counts) over valid cells — a cell counts only if the observation
and all members are finite — so cases merge by addition.

* CRPS of the ensemble's empirical CDF (Hersbach 2000; pysteps' ``CRPS``,
  ``scores``' ``crps_for_ensemble(method="ecdf")``).
* Rank histogram with ties shared equally among the ranks they span (as
  ``scores.probability.rank_histogram``), optionally ignoring cells where the
  observation and all members are below ``x_min`` (as pysteps' ``rankhist``).
* Reliability: the probability of ``value >= threshold`` is the share of
  members at or above it, binned like pysteps' ``reldiag``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from nowcast.verification.align import REALIZATION, valid_mask
from nowcast.verification.categorical import threshold_coord

CRPS_SUMS = ("crps_sum", "crps_n")
RANK_SUMS = ("rank_count",)
RELIABILITY_SUMS = ("rel_prob_sum", "rel_event_sum", "rel_count", "brier_sum")


def _members_whole(fc: xr.DataArray) -> xr.DataArray:
    return fc.chunk({REALIZATION: -1}) if fc.chunks is not None else fc


def crps_sums(fc: xr.DataArray, ob: xr.DataArray, dims: Sequence[str] = ("y", "x")) -> xr.Dataset:
    """Sum of the per-cell ensemble CRPS over ``dims`` and the number of cells summed.

    Uses ``CRPS = mean|x_i - y| - sum_k (2k - M - 1) x_(k) / M²`` with the
    members ``x_(k)`` sorted, which equals the half mean absolute difference
    between members without forming all pairs.
    """
    valid = valid_mask(fc, ob)
    x = _members_whole(fc.astype("f8"))
    y = ob.astype("f8")
    m = fc.sizes[REALIZATION]
    ordered = xr.apply_ufunc(np.sort, x, input_core_dims=[[REALIZATION]], output_core_dims=[[REALIZATION]],
                             kwargs={"axis": -1}, dask="parallelized", output_dtypes=["f8"])
    weight = xr.DataArray(2.0 * np.arange(1, m + 1) - m - 1, dims=REALIZATION)
    crps = abs(x - y).mean(REALIZATION) - (ordered * weight).sum(REALIZATION) / m ** 2
    return xr.Dataset({"crps_sum": crps.where(valid).sum(list(dims)), "crps_n": valid.sum(list(dims), dtype="i8")})


def rank_histogram_sums(fc: xr.DataArray, ob: xr.DataArray, dims: Sequence[str] = ("y", "x"),
                        x_min: float | None = None) -> xr.Dataset:
    """Counts of the observation's rank among the members (ranks 1 to M + 1).

    A tie between the observation and ``k`` members spreads the count evenly
    over the ``k + 1`` ranks it spans. With ``x_min``, cells where the
    observation and all members are below it are skipped and values below it
    tie (pysteps' convention for dry cells).

    Returns:
        Dataset with ``rank_count`` (float64, fractional with ties), dims
        ``(kept..., rank)``.
    """
    valid = valid_mask(fc, ob)
    x, y = fc.astype("f8"), ob.astype("f8")
    if x_min is not None:
        valid = valid & ((y >= x_min) | (x >= x_min).any(REALIZATION))
        x, y = x.where(x >= x_min, x_min - 1.0), y.where(y >= x_min, x_min - 1.0)
    below = (x < y).sum(REALIZATION)
    equal = (x == y).sum(REALIZATION)
    m = fc.sizes[REALIZATION]
    share = (1.0 / (equal + 1)).where(valid, 0.0)
    counts = [share.where((below <= r) & (r <= below + equal), 0.0).sum(list(dims)) for r in range(m + 1)]
    rank = xr.concat(counts, dim="rank").assign_coords(rank=("rank", np.arange(1, m + 2), {"long_name": "rank"}))
    return xr.Dataset({"rank_count": rank.transpose(..., "rank")})


def reliability_sums(fc: xr.DataArray, ob: xr.DataArray, thresholds: Sequence[float],
                     dims: Sequence[str] = ("y", "x"), n_bins: int = 10) -> xr.Dataset:
    """Binned sums for reliability diagrams and the Brier score, per threshold.

    The forecast probability is the share of members ``>= threshold``; bins
    split [0, 1] into ``n_bins`` like pysteps' ``reldiag``.

    Returns:
        Dataset with ``rel_prob_sum`` (sum of probabilities), ``rel_event_sum``
        (observed events), ``rel_count`` (cells) per ``(threshold,
        probability_bin)``, and ``brier_sum`` per threshold.
    """
    thr = threshold_coord(thresholds, fc.attrs.get("units"))
    valid = valid_mask(fc, ob)
    prob = (fc >= thr).mean(REALIZATION).where(valid)
    event = (ob >= thr).astype("f8").where(valid)
    edges = np.linspace(-1e-6, 1 + 1e-6, n_bins + 1)
    # pysteps bins with np.digitize(right=True): bin b holds edges[b-1] < p <= edges[b].
    index = sum((prob > e).astype("i4") for e in edges)
    parts = {"rel_prob_sum": prob, "rel_event_sum": event, "rel_count": valid.astype("i8")}
    out = {name: xr.concat([value.where(index == b, 0).sum(list(dims)) for b in range(1, n_bins + 1)],
                           dim="probability_bin").transpose(..., "probability_bin")
           for name, value in parts.items()}
    out["brier_sum"] = ((prob - event) ** 2).sum(list(dims))
    centres = (np.arange(n_bins) + 0.5) / n_bins
    return xr.Dataset(out).assign_coords(
        threshold=thr, probability_bin=("probability_bin", centres, {"long_name": "forecast probability bin centre"}))


def probabilistic_scores(sums: xr.Dataset) -> xr.Dataset:
    """CRPS, rank histogram (relative frequencies), reliability curve and Brier score from the sums present."""
    out = xr.Dataset()
    if "crps_sum" in sums:
        n = sums["crps_n"].where(sums["crps_n"] > 0)
        out["crps"] = (sums["crps_sum"] / n).assign_attrs(long_name="continuous ranked probability score")
    if "rank_count" in sums:
        total = sums["rank_count"].sum("rank")
        out["rank_histogram"] = (sums["rank_count"] / total.where(total > 0)).assign_attrs(
            long_name="relative frequency of the observation's rank", units="1")
    if "rel_count" in sums:
        count = sums["rel_count"].where(sums["rel_count"] > 0)
        out["forecast_probability"] = (sums["rel_prob_sum"] / count).assign_attrs(
            long_name="mean forecast probability in bin", units="1")
        out["observed_frequency"] = (sums["rel_event_sum"] / count).assign_attrs(
            long_name="observed relative frequency in bin", units="1")
        cells = sums["rel_count"].sum("probability_bin")
        out["brier"] = (sums["brier_sum"] / cells.where(cells > 0)).assign_attrs(long_name="Brier score", units="1")
    return out
