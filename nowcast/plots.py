"""Score plots that are not maps: scores against lead time, power spectra, rank histograms, reliability.

Every function compares all methods in its input, draws baselines (e.g.
persistence, Lagrangian extrapolation) dashed so models stand out, and writes
the figure atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.products.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# Method names drawn as baselines (dashed) rather than models.
BASELINES = ("persistence", "lagrangian", "extrapolation", "historical_average", "climatology", "steps", "sprog")
METRIC_LABELS = {
    "pod": "POD", "far": "FAR", "csi": "CSI", "ets": "ETS", "hss": "HSS", "bias": "frequency bias",
    "fss": "FSS", "me": "mean error", "mae": "MAE", "rmse": "RMSE", "corr": "correlation", "ssim": "SSIM",
    "psnr": "PSNR (dB)", "mse_frame": "MSE per frame (OpenSTL)", "mae_frame": "MAE per frame (OpenSTL)",
    "crps": "CRPS", "brier": "Brier score",
}


def is_baseline(method: str) -> bool:
    """True for the classic baselines (by name)."""
    return method.lower().split(";")[0].strip() in BASELINES


def _styles(methods: Sequence[str]) -> dict[str, dict]:
    """Stable colour and line style per method: models solid, baselines dashed."""
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    return {m: {"color": colors[i % len(colors)], "linestyle": "--" if is_baseline(m) else "-",
                "marker": "o", "markersize": 3, "linewidth": 1.6}
            for i, m in enumerate(sorted(methods, key=lambda m: (is_baseline(m), m)))}


def save_figure(fig: "Figure", path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    log.info("wrote %s", path)
    return path


def _panels(n: int, width: float = 4.2, height: float = 3.3) -> tuple["Figure", list["Axes"]]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def plot_scores_vs_lead(table: pd.DataFrame, path: str | os.PathLike, *, metric: str = "csi",
                        threshold: float | None = None, scale_km: float | None = None,
                        units: str = "", title: str | None = None) -> Path:
    """One line per method of ``metric`` against lead time (a panel per threshold and FSS scale).

    Args:
        table: tidy scores (:func:`nowcast.verification.scores_table`), any
            number of methods.
        metric: a ``metric`` value in the table (``csi``, ``fss``, ``rmse``, ...).
        threshold, scale_km: keep only this threshold / FSS window.
        units: units of the thresholds, for the panel titles.

    Returns:
        ``path``.

    Raises:
        ValueError: if the table has no rows for ``metric`` (and ``threshold``).
    """
    rows = table[table["metric"] == metric]
    if threshold is not None:
        rows = rows[np.isclose(rows["threshold"], threshold)]
    if scale_km is not None:
        rows = rows[np.isclose(rows["scale_km"], scale_km)]
    if rows.empty:
        raise ValueError(f"no '{metric}' scores" + (f" at threshold {threshold:g}" if threshold is not None else ""))
    return plot_score_grid(rows, path, [metric], units=units,
                           title=title or f"{METRIC_LABELS.get(metric, metric)} against lead time")


def plot_score_grid(table: pd.DataFrame, path: str | os.PathLike, metrics: Sequence[str], *, units: str = "",
                    title: str = "Scores against lead time") -> Path:
    """Several scores against lead time in one figure: a row per metric, a column per threshold / FSS window.

    Metrics without thresholds share one row. Metrics absent from ``table``
    are skipped.
    """
    import matplotlib.pyplot as plt

    rows = table[table["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"none of {list(metrics)} in the table")
    keyed = {m: rows[rows["metric"] == m][["threshold", "scale_km"]].drop_duplicates()
             .sort_values(["threshold", "scale_km"]) for m in metrics if (rows["metric"] == m).any()}
    n_cols = max(len(keys) for keys in keyed.values())
    if n_cols == 1:
        layout = [[(m, keys.iloc[0]) for m, keys in keyed.items()]]
        n_cols = len(keyed)
    else:
        layout = [[(m, key) for _, key in keys.iterrows()] for m, keys in keyed.items()]
    fig, axes = plt.subplots(len(layout), n_cols, figsize=(4.0 * n_cols, 3.0 * len(layout) + 0.4),
                             squeeze=False, layout="constrained")
    styles = _styles(rows["method"].unique())
    for r, line_up in enumerate(layout):
        for c in range(n_cols):
            if c >= len(line_up):
                axes[r, c].set_axis_off()
                continue
            metric, key = line_up[c]
            _lines(axes[r, c], rows[rows["metric"] == metric], key, metric, styles, units)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # About three entries fit in a 4-inch-wide panel; wrap onto more rows rather than crop.
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5, 3 * n_cols), fontsize=8,
               frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


def _lines(ax: "Axes", rows: pd.DataFrame, key: pd.Series, metric: str, styles: dict, units: str) -> None:
    """One panel: each method's ``metric`` at one threshold / window against lead time."""
    panel = rows[_same(rows["threshold"], key["threshold"]) & _same(rows["scale_km"], key["scale_km"])]
    for method, style in styles.items():
        line = panel[panel["method"] == method].sort_values("lead_min")
        if not line.empty:
            ax.plot(line["lead_min"], line["value"], label=method, **style)
    parts = []
    if not np.isnan(key["threshold"]):
        parts.append(f">= {key['threshold']:g} {units}".strip())
    if not np.isnan(key["scale_km"]):
        parts.append(f"{key['scale_km']:g} km window")
    ax.set_title(", ".join(parts), fontsize=9)
    ax.set_xlabel("lead time (min)")
    in_units = metric in ("me", "mae", "rmse", "crps") and units not in ("", "1")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + (f" ({units})" if in_units else ""))
    ax.grid(alpha=0.3)
    if metric in ("pod", "far", "csi", "fss", "ssim"):
        ax.set_ylim(0, 1)
    if metric == "bias":
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")


def _same(column: pd.Series, value: float) -> pd.Series:
    return column.isna() if np.isnan(value) else np.isclose(column, value)


def _methods(scores: xr.Dataset) -> list[str]:
    return [str(m) for m in scores["method"].values] if "method" in scores.dims else [scores.attrs.get("source", "")]


def _by_method(scores: xr.Dataset, method: str) -> xr.Dataset:
    return scores.sel({"method": method}) if "method" in scores.dims else scores  # sel(method=) is a keyword


def _lead_index(scores: xr.Dataset, lead_min: float | None) -> int:
    minutes = scores["forecast_period"].values / np.timedelta64(1, "m")
    return len(minutes) - 1 if lead_min is None else int(np.argmin(np.abs(minutes - lead_min)))


def plot_power_spectra(scores: xr.Dataset, path: str | os.PathLike, *, lead_min: float | None = None) -> Path:
    """Power spectra at one lead (default: the longest): absolute, and forecast over observed.

    Forecasts that blur lose power at short wavelengths: their ratio drops
    below 1 on the right. Each method's ratio uses the observations on its
    own valid cells (the absolute panel shows the first method's).
    """
    i = _lead_index(scores, lead_min)
    lead = int(scores["forecast_period"].values[i] / np.timedelta64(1, "m"))
    fig, (spectra, ratio) = _panels(2, width=5.0, height=3.8)
    methods = _methods(scores)
    styles = _styles(methods)
    wavelength = scores["wavelength"].values
    for method in methods:
        one = _by_method(scores, method).isel(forecast_period=i)
        style = {**styles[method], "marker": None}
        spectra.loglog(wavelength, one["psd_forecast"].values, label=method, **style)
        ratio.semilogx(wavelength, (one["psd_forecast"] / one["psd_observed"]).values, label=method, **style)
    first = _by_method(scores, methods[0]).isel(forecast_period=i)
    spectra.loglog(wavelength, first["psd_observed"].values, color="black", linewidth=2.2, label="observed")
    ratio.axhline(1.0, color="black", linewidth=1.2, linestyle=":")
    spectra.set_ylabel("power spectral density")
    ratio.set_ylabel("forecast / observed power")
    for ax in (spectra, ratio):
        ax.invert_xaxis()
        ax.set_xlabel("wavelength (km)")
        ax.grid(alpha=0.3, which="both")
    spectra.legend(fontsize=8)
    fig.suptitle(f"Radially averaged power spectra at +{lead} min")
    return save_figure(fig, path)


def plot_rank_histograms(scores: xr.Dataset, path: str | os.PathLike, *, lead_min: float | None = None) -> Path:
    """Rank histograms of the ensemble methods at one lead (flat = calibrated spread)."""
    i = _lead_index(scores, lead_min)
    methods = [m for m in _methods(scores) if np.isfinite(_by_method(scores, m)["rank_histogram"]).any()]
    fig, axes = _panels(len(methods), width=3.6)
    for ax, method in zip(axes, methods):
        hist = _by_method(scores, method)["rank_histogram"].isel(forecast_period=i)
        ax.bar(hist["rank"].values, hist.values, color="#4575b4")
        ax.axhline(1.0 / hist.sizes["rank"], color="black", linestyle=":", linewidth=1)
        ax.set_xlabel("rank of the observation")
        ax.set_ylabel("relative frequency")
        ax.set_title(method, fontsize=10)
    fig.suptitle("Rank histograms")
    return save_figure(fig, path)


def plot_reliability(scores: xr.Dataset, path: str | os.PathLike, *, threshold: float,
                     lead_min: float | None = None) -> Path:
    """Reliability diagram (observed frequency against forecast probability) of each ensemble method."""
    i = _lead_index(scores, lead_min)
    fig, axes = _panels(1, width=4.5, height=4.3)
    ax = axes[0]
    methods = _methods(scores)
    styles = _styles(methods)
    for method in methods:
        one = _by_method(scores, method).isel(forecast_period=i).sel(threshold=threshold)
        prob, freq = one["forecast_probability"].values, one["observed_frequency"].values
        ok = np.isfinite(prob) & np.isfinite(freq)
        if ok.any():
            ax.plot(prob[ok], freq[ok], label=method, **styles[method])
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect reliability")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed relative frequency")
    ax.legend(fontsize=8)
    ax.set_title(f"Reliability at >= {threshold:g}")
    return save_figure(fig, path)
