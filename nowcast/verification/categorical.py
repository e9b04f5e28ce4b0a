"""Categorical (yes/no) verification per threshold: contingency tables and their scores.

An event is a value at or above the threshold (``>=``). Contingency tables are
plain counts, so tables of many cases merge by addition (as pysteps'
``det_cat_fct_merge``); the scores are computed from the merged counts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from nowcast.verification.align import valid_mask

COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")
SCORES = ("pod", "far", "csi", "ets", "hss", "bias")

# Category codes of contingency_categories (and the maps drawn from them).
CORRECT_NEGATIVE, HIT, MISS, FALSE_ALARM = 0, 1, 2, 3


def threshold_coord(thresholds: Sequence[float], units: str | None = None) -> xr.DataArray:
    """The ``threshold`` coordinate (float64) shared by all threshold-based scores."""
    return xr.DataArray(np.asarray(thresholds, dtype="f8"), dims="threshold",
                        attrs={"long_name": "event threshold (value >= threshold)", "units": units or ""})


def contingency_table(fc: xr.DataArray, ob: xr.DataArray, thresholds: Sequence[float],
                      dims: Sequence[str] = ("y", "x")) -> xr.Dataset:
    """Hits, misses, false alarms and correct negatives per threshold.

    Args:
        fc, ob: forecast and observed fields (same dims, e.g. from
            :func:`~nowcast.verification.align.align`); lazy arrays stay lazy.
        thresholds: event thresholds in the fields' units.
        dims: dims to count over; the others (lead, ...) are kept.

    Returns:
        Dataset of int64 counts ``hits``, ``misses``, ``false_alarms``,
        ``correct_negatives`` with a ``threshold`` dim added. Cells where
        either field is NaN are not counted.
    """
    thr = threshold_coord(thresholds, fc.attrs.get("units"))
    valid = valid_mask(fc, ob)
    fc_yes = (fc >= thr) & valid
    ob_yes = (ob >= thr) & valid
    dims = list(dims)
    hits = (fc_yes & ob_yes).sum(dims, dtype="i8")
    forecast_yes = fc_yes.sum(dims, dtype="i8")
    observed_yes = ob_yes.sum(dims, dtype="i8")
    cells = valid.sum(dims, dtype="i8")
    out = xr.Dataset({
        "hits": hits,
        "misses": observed_yes - hits,
        "false_alarms": forecast_yes - hits,
        "correct_negatives": cells - forecast_yes - observed_yes + hits,
    })
    return out.assign_coords(threshold=thr)


def categorical_scores(table: xr.Dataset) -> xr.Dataset:
    """POD, FAR, CSI, ETS (= GSS), HSS and frequency bias from contingency counts.

    Args:
        table: counts from :func:`contingency_table`, possibly summed over cases.

    Returns:
        Dataset with ``pod``, ``far``, ``csi``, ``ets``, ``hss``, ``bias``
        (NaN where a score is undefined, e.g. POD without observed events).
    """
    h, m, f, r = (table[name].astype("f8") for name in COUNTS)
    n = h + m + f + r
    hits_random = (h + m) * (h + f) / n
    out = xr.Dataset({
        "pod": _ratio(h, h + m),
        "far": _ratio(f, h + f),
        "csi": _ratio(h, h + m + f),
        "ets": _ratio(h - hits_random, h + m + f - hits_random),
        "hss": _ratio(2 * (h * r - f * m), (h + m) * (m + r) + (h + f) * (f + r)),
        "bias": _ratio(h + f, h + m),
    })
    for name, long_name in zip(SCORES, ("probability of detection", "false alarm ratio",
                                        "critical success index", "equitable threat score (Gilbert skill score)",
                                        "Heidke skill score", "frequency bias")):
        out[name].attrs.update(long_name=long_name, units="1")
    return out


def _ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
    return (num / den.where(den != 0)).astype("f8")


def contingency_categories(fc: xr.DataArray, ob: xr.DataArray, threshold: float) -> xr.DataArray:
    """Per-cell category for one threshold: 0 correct negative, 1 hit, 2 miss, 3 false alarm.

    NaN where either field is NaN. Same dims as the inputs.
    """
    fc_yes = fc >= threshold
    ob_yes = ob >= threshold
    code = xr.where(fc_yes, xr.where(ob_yes, HIT, FALSE_ALARM), xr.where(ob_yes, MISS, CORRECT_NEGATIVE))
    out = code.where(valid_mask(fc, ob))
    out.attrs.update(long_name=f"contingency category at {threshold:g} {fc.attrs.get('units', '')}".strip(),
                     flag_values=[CORRECT_NEGATIVE, HIT, MISS, FALSE_ALARM],
                     flag_meanings="correct_negative hit miss false_alarm")
    return out
