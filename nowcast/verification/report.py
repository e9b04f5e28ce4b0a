"""Verify many forecast files against an archive: tidy table, NetCDF, plots and a Markdown report.

Steps, shared by ``nowcast verify`` and the Prefect flow ``flows/verify.py``:
:func:`case_supports` (per issue time, the cells every method forecasts) →
:func:`score_case` (one per file; small sums) → :func:`aggregate` (per
method, by lead: pooled sums or the mean of per-case scores) → :func:`write_scores` (CSV +
NetCDF) → :func:`write_report` (figures + ``report.md``).
:func:`verify_forecasts` runs them in order.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.netcdf_lock import NETCDF_LOCK
from nowcast.products.atomic import atomic_path, write_text_atomic
from nowcast.schema import SchemaError, data_variables
from nowcast.verification.align import LEAD, VerificationError, restrict, support_mask
from nowcast.verification.score import DEFAULT_FSS_SCALES_KM, accumulate, default_metrics, finalize, merge
from nowcast.verification.table import scores_table

log = logging.getLogger(__name__)

# Per-lead scores shown in the report's summary tables, in this order.
SUMMARY_METRICS = ("csi", "ets", "fss", "mae", "rmse", "corr", "ssim", "crps")
# Figures of scores against lead time: (file stem, caption, metrics), drawn when present.
LEAD_FIGURES = (
    ("categorical", "Categorical scores per threshold", ("csi", "ets", "pod", "far", "bias", "hss")),
    ("fss", "Fractions skill score per threshold and window", ("fss",)),
    ("continuous", "Continuous scores", ("me", "mae", "rmse", "corr")),
    ("images", "Image scores per frame", ("ssim", "psnr", "mse_frame", "mae_frame")),
    ("ensemble", "Ensemble scores", ("crps", "brier")),
)
MAX_MAP_ROWS = 6
SUPPORTS = ("common", "own")
AGGREGATIONS = ("pooled", "mean")


@dataclass(frozen=True)
class VerifyOptions:
    """What to score (see :func:`nowcast.verification.default_metrics`)."""

    thresholds: tuple[float, ...] | None = None
    fss_scales_km: tuple[float, ...] = DEFAULT_FSS_SCALES_KM
    data_range: float | None = None
    openstl: bool = False
    #: ``common``: each case (issue time) on the cells every method forecasts; ``own``: each file on its own.
    support: str = "common"
    #: ``pooled``: sums over all cases, then scores; ``mean``: scores per case, then their mean.
    aggregate: str = "pooled"

    def __post_init__(self):
        if self.support not in SUPPORTS:
            raise VerificationError(f"support must be one of {SUPPORTS}, got {self.support!r}")
        if self.aggregate not in AGGREGATIONS:
            raise VerificationError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")


@dataclass
class Case:
    """The sums of one forecast file (one method, one issue time)."""

    method: str
    reference_time: pd.Timestamp
    sums: xr.Dataset
    metrics: list = field(repr=False)
    path: Path | None = None


@dataclass
class VerificationResult:
    """Everything :func:`verify_forecasts` wrote."""

    table: pd.DataFrame
    scores: xr.Dataset
    csv: Path
    netcdf: Path
    report: Path
    figures: list[Path]


def method_name(forecast: xr.Dataset) -> str:
    """The method that made a forecast: its ``source`` attribute without the checkpoint note.

    :func:`nowcast.products.write_cf_netcdf` appends the weights' hash to
    ``source`` (``"tau-tiny (checkpoint 1a2b)"``); cases of one model
    aggregate under its bare name.
    """
    source = str(forecast.attrs.get("source", "forecast"))
    return re.sub(r"\s*[;(]\s*checkpoint\b.*$", "", source).strip() or "forecast"


def open_forecast(path: str | os.PathLike) -> xr.Dataset:
    """Open a forecast CF-NetCDF file (lazily, dask) as a data-model forecast.

    Raises:
        VerificationError: naming the file: missing, unreadable, not the
            data model, or not a forecast.
    """
    from nowcast.products import open_cf_netcdf

    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"{path}: no such forecast file")
    try:
        forecast = open_cf_netcdf(path, chunks={})
    except SchemaError as err:
        raise VerificationError(f"{path}: not a nowcast dataset: {err}") from err
    except (OSError, ValueError, KeyError) as err:
        raise VerificationError(f"{path}: cannot read it as NetCDF ({err})") from err
    if "forecast_reference_time" not in forecast.coords:
        raise VerificationError(f"{path}: holds observations, not a forecast (no forecast_reference_time)")
    return forecast


def case_supports(forecasts: Sequence[str | os.PathLike | xr.Dataset],
                  options: VerifyOptions = VerifyOptions()) -> list[xr.DataArray | None]:
    """Per forecast, the cells and valid times every forecast of its case (same issue time) has a value.

    All None with ``options.support == "own"``. The masks are small booleans,
    computed here, to pass to :func:`score_case`.
    """
    if options.support == "own":
        return [None] * len(forecasts)
    opened = [f if isinstance(f, xr.Dataset) else open_forecast(f) for f in forecasts]
    cases: dict[pd.Timestamp, list[int]] = defaultdict(list)
    for i, forecast in enumerate(opened):
        cases[pd.Timestamp(forecast["forecast_reference_time"].values)].append(i)
    masks: list[xr.DataArray | None] = [None] * len(forecasts)
    for when, members in cases.items():
        try:
            mask = support_mask([opened[i] for i in members]).compute()
        except VerificationError as err:
            raise VerificationError(f"forecasts issued {when:%Y-%m-%d %H:%M}: {err} (score each file on its "
                                    "own cells with --support own)") from err
        for i in members:
            masks[i] = mask
    return masks


def score_case(forecast: xr.Dataset | str | os.PathLike, obs: xr.Dataset,
               options: VerifyOptions = VerifyOptions(), support: xr.DataArray | None = None) -> Case:
    """Sums of one forecast (a dataset or a file) against the observations, computed.

    ``support`` (from :func:`case_supports`) restricts it to the cells and
    valid times its case shares.
    """
    path = None if isinstance(forecast, xr.Dataset) else Path(forecast)
    dataset = open_forecast(path) if path is not None else forecast
    metrics = default_metrics(dataset, thresholds=options.thresholds, fss_scales_km=options.fss_scales_km,
                              data_range=options.data_range, openstl=options.openstl)
    try:
        sums = accumulate(dataset if support is None else restrict(dataset, support), obs, metrics).compute()
    except VerificationError as err:
        raise VerificationError(f"{path}: {err}" if path else str(err)) from err
    name = method_name(dataset)
    log.info("scored %s issued %s", name, pd.Timestamp(dataset["forecast_reference_time"].values))
    return Case(name, pd.Timestamp(dataset["forecast_reference_time"].values), sums, metrics, path)


def aggregate(cases: Sequence[Case], how: str = "pooled") -> xr.Dataset:
    """Scores per method and lead over all its cases: one Dataset with a ``method`` dim.

    ``how="pooled"`` adds the sums of all cases, then scores them (as if all
    fields were one); ``"mean"`` scores each case, then averages the scores
    (cases weigh the same, however many cells they have). The pooled sums
    are kept either way. Attributes record the number of cases per method
    (``cases_<method>``) and ``aggregation``.
    """
    if not cases:
        raise VerificationError("no forecasts to verify")
    if how not in AGGREGATIONS:
        raise VerificationError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    by_method: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_method[case.method].append(case)
    per_method = []
    for name in sorted(by_method, key=_method_order):
        group = by_method[name]
        pooled = merge(c.sums for c in group)
        if how == "pooled":
            scores = finalize(pooled, group[0].metrics)
        else:
            per_case = [xr.merge([m.finalize(c.sums) for m in c.metrics if m.produces in c.sums],
                                 combine_attrs="override") for c in group]
            mean = xr.concat(per_case, dim="case", join="outer", combine_attrs="override").mean("case", keep_attrs=True)
            scores = xr.merge([pooled, mean], combine_attrs="override")
        per_method.append(scores.expand_dims(method=[name]))
    out = xr.concat(per_method, dim="method", join="outer", combine_attrs="drop_conflicts")
    out.attrs.update({f"cases_{name}": len(group) for name, group in by_method.items()})
    out.attrs["aggregation"] = how
    out.attrs.pop("source", None)
    return out


def _method_order(name: str) -> tuple[bool, str]:
    from nowcast.plots import is_baseline

    return (is_baseline(name), name)


def write_scores(scores: xr.Dataset, out_dir: str | os.PathLike) -> tuple[pd.DataFrame, Path, Path]:
    """``scores.csv`` (tidy table) and ``scores.nc`` (scores, curves and the sums behind them)."""
    out = Path(out_dir)
    table = scores_table(scores)
    csv = out / "scores.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    netcdf = out / "scores.nc"
    ds = scores.copy().load()  # compute before taking the NetCDF lock
    ds.attrs = {k: v for k, v in ds.attrs.items() if v is not None}
    ds.attrs.setdefault("title", "nowcast verification scores by method and lead time")
    with atomic_path(netcdf) as tmp, NETCDF_LOCK:
        ds.to_netcdf(tmp, engine="netcdf4", encoding={LEAD: {"units": "minutes", "dtype": "f8"}})
    log.info("wrote %s (%d rows) and %s", csv, len(table), netcdf)
    return table, csv, netcdf


def write_report(scores: xr.Dataset, table: pd.DataFrame, cases: Sequence[Case], obs: xr.Dataset,
                 out_dir: str | os.PathLike, *, obs_label: str = "observations",
                 animate: bool = True) -> tuple[Path, list[Path]]:
    """Figures under ``out_dir/figures`` and ``out_dir/report.md`` that embeds them by relative path.

    Maps show one issue time (the latest shared by most methods): forecast
    panels, contingency at the lowest threshold and, pooled over all cases,
    where each method's error concentrates; plus a forecast loop (GIF) of
    the first model.
    """
    from nowcast import maps, plots

    out = Path(out_dir)
    fig_dir = out / "figures"
    units = str(scores.attrs.get("units", ""))
    sections: list[tuple[str, list[tuple[str, Path]]]] = []
    lead_figures = []
    for stem, caption, metrics in LEAD_FIGURES:
        if set(metrics) & set(table["metric"]):
            lead_figures.append((caption, plots.plot_score_grid(table, fig_dir / f"{stem}_vs_lead.png", metrics,
                                                                units=units, title=caption)))
    sections.append(("Scores against lead time", lead_figures))
    curves = []
    if "psd_forecast" in scores:
        curves.append(("Power spectra", plots.plot_power_spectra(scores, fig_dir / "power_spectra.png")))
    if "rank_histogram" in scores and np.isfinite(scores["rank_histogram"]).any():
        curves.append(("Rank histograms", plots.plot_rank_histograms(scores, fig_dir / "rank_histograms.png")))
        for thr in scores["threshold"].values:
            curves.append((f"Reliability at {thr:g} {units}",
                           plots.plot_reliability(scores, fig_dir / f"reliability_{thr:g}.png", threshold=float(thr))))
    if curves:
        sections.append(("Spectra and ensemble diagnostics", curves))
    sections.append(("Maps", _report_maps(maps, scores, cases, obs, fig_dir, animate)))
    text = _markdown(scores, table, cases, obs, obs_label, sections, out)
    report = write_text_atomic(out / "report.md", text)
    figures = [path for _, items in sections for _, path in items]
    log.info("wrote %s with %d figures", report, len(figures))
    return report, figures


def _map_case(cases: Sequence[Case]) -> tuple[pd.Timestamp, dict[str, Path], list[str]]:
    """The issue time with the most methods (latest on ties), its forecast file per method (at most
    :data:`MAX_MAP_ROWS`) and the methods left out."""
    files: dict[pd.Timestamp, dict[str, Path]] = defaultdict(dict)
    for case in cases:
        if case.path is not None:
            files[case.reference_time].setdefault(case.method, case.path)
    if not files:
        return pd.NaT, {}, []
    when = max(files, key=lambda t: (len(files[t]), t))
    ordered = sorted(files[when], key=_method_order)
    return when, {name: files[when][name] for name in ordered[:MAX_MAP_ROWS]}, ordered[MAX_MAP_ROWS:]


def _report_maps(maps, scores: xr.Dataset, cases: Sequence[Case], obs: xr.Dataset, fig_dir: Path,
                 animate: bool) -> list[tuple[str, Path]]:
    when, paths, left_out = _map_case(cases)
    if not paths:
        return []
    forecasts = {name: open_forecast(path) for name, path in paths.items()}
    issued = f"{when:%Y-%m-%d %H:%M} UTC"
    figures = [(f"Forecasts issued {issued} and observations"
                + (f" (left out: {', '.join(left_out)})" if left_out else ""),
                maps.plot_forecast_panels(forecasts, obs, fig_dir / "forecast_panels.png"))]
    if "threshold" in scores.coords and scores.sizes.get("threshold", 0):
        threshold = float(scores["threshold"].min())
        figures.append((f"Contingency at {threshold:g} (issued {issued})",
                        maps.plot_contingency_map(forecasts, obs, fig_dir / "contingency_map.png",
                                                  threshold=threshold)))
    pooled: dict[str, list[xr.Dataset]] = defaultdict(list)
    for case in cases:
        if case.path is not None and case.method in forecasts:
            pooled[case.method].append(open_forecast(case.path))
    figures.append(("Where the RMSE concentrates (all cases and lead times)",
                    maps.plot_error_map(forecasts, obs, fig_dir / "rmse_map.png", cases=pooled)))
    if "crowd_flow" in data_variables(next(iter(forecasts.values()))):
        figures.append(("Observed flows over the city",
                        maps.plot_flow_map(obs, fig_dir / "flow_map.png", time=next(iter(forecasts.values()))
                                           ["time"].values[0])))
    if animate:
        name = next(iter(forecasts))
        figures.append((f"Forecast loop of {name} (issued {issued})",
                        maps.animate_forecast(forecasts[name], fig_dir / f"loop_{_slug(name)}.gif", obs=obs)))
    return figures


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _markdown(scores: xr.Dataset, table: pd.DataFrame, cases: Sequence[Case], obs: xr.Dataset, obs_label: str,
              sections, out: Path) -> str:
    variable = str(scores.attrs.get("variable", data_variables(obs)[0]))
    units = str(scores.attrs.get("units", ""))
    units = units if units not in ("", "1") else "counts"
    times = pd.DatetimeIndex(obs["time"].values)
    lines = [
        "# Verification report", "",
        f"Observations: `{obs_label}` — {variable} ({units}), {obs.sizes['y']} x {obs.sizes['x']} cells, "
        f"{times[0]:%Y-%m-%d %H:%M}..{times[-1]:%Y-%m-%d %H:%M} UTC. Cells without observation (NaN) are left "
        "out of every score.", "",
        "## Forecasts", "",
    ]
    rows = []
    for name in scores["method"].values:
        mine = [c for c in cases if c.method == name]
        issued = sorted(c.reference_time for c in mine)
        leads = table[table.method == name]["lead_min"]
        rows.append([name, "baseline" if _method_order(name)[0] else "model", str(len(mine)),
                     f"{issued[0]:%Y-%m-%d %H:%M}" + (f" .. {issued[-1]:%Y-%m-%d %H:%M}" if len(issued) > 1 else ""),
                     f"{leads.min():g}..{leads.max():g} min" if len(leads) else "-"])
    lines += _md_table(["method", "kind", "cases", "issued (UTC)", "lead times"], rows) + [""]
    thresholds = (", ".join(f"{t:g}" for t in scores["threshold"].values) + f" {units}"
                  if "threshold" in scores.coords else "none")
    windows = ", ".join(f"{s:g} km" for s in scores["scale"].values) if "scale" in scores.coords else "none"
    support = (
        "Every method is scored on the **common support** of each case: the cells and valid times that all "
        "methods issued at that time forecast (Lagrangian extrapolation has no value where rain enters from "
        "outside the domain), so methods are compared on the same cells. "
        if scores.attrs.get("support", "common") == "common" else
        "Each forecast is scored on **its own** valid cells (`--support own`): methods with fewer valid cells, "
        "such as Lagrangian extrapolation at the inflow edge, are scored on fewer cells than the others. ")
    aggregation = ("Scores pool the sums of all cases of a method per lead time, then score them."
                   if scores.attrs.get("aggregation", "pooled") == "pooled" else
                   "Scores are computed per case, then averaged over the cases of a method per lead time "
                   "(`--aggregate mean`).")
    lines += [f"Event thresholds: {thresholds}; FSS windows: {windows}. {support}{aggregation} "
              "Full table: [scores.csv](scores.csv); "
              "scores, curves and the sums behind them: [scores.nc](scores.nc).", ""]
    lines += ["## Summary", ""] + _summary(table) + [""]
    for title, items in sections:
        if not items:
            continue
        lines += [f"## {title}", ""]
        for caption, path in items:
            lines += [f"![{caption}]({path.relative_to(out).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _summary(table: pd.DataFrame) -> list[str]:
    """One Markdown table per chosen lead (first, middle, last): methods x main scores."""
    leads = sorted(table["lead_min"].unique())
    if not leads:
        return ["No scores."]
    chosen = sorted({leads[0], leads[len(leads) // 2], leads[-1]})
    first_thr = table["threshold"].dropna().min()
    first_scale = table["scale_km"].dropna().min()
    keep = table[table.metric.isin(SUMMARY_METRICS)
                 & (table.threshold.isna() | np.isclose(table.threshold, first_thr))
                 & (table.scale_km.isna() | np.isclose(table.scale_km, first_scale))]
    metrics = [m for m in SUMMARY_METRICS if m in set(keep.metric)]
    labels = {m: f"{m.upper()} >= {first_thr:g}" if m in ("csi", "ets", "fss") else m.upper() for m in metrics}
    if "fss" in labels:
        labels["fss"] += f" ({first_scale:g} km)"
    lines = []
    for lead in chosen:
        wide = keep[keep.lead_min == lead].pivot_table(index="method", columns="metric", values="value")
        rows = [[method] + [f"{wide.at[method, m]:.3f}" if m in wide and np.isfinite(wide.at[method, m]) else "-"
                            for m in metrics] for method in sorted(wide.index, key=_method_order)]
        lines += [f"**+{lead:g} min**", ""] + _md_table(["method"] + [labels[m] for m in metrics], rows) + [""]
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def verify_forecasts(forecasts: Sequence[str | os.PathLike | xr.Dataset], obs: xr.Dataset,
                     out_dir: str | os.PathLike, options: VerifyOptions = VerifyOptions(), *,
                     obs_label: str = "observations", animate: bool = True) -> VerificationResult:
    """Score every forecast, aggregate by method and lead, write table, NetCDF, figures and report.

    Args:
        forecasts: CF-NetCDF files (or datasets; maps need files) of any
            methods and issue times; the method is each file's ``source``.
        obs: observations covering the valid times (e.g. an archive).
        out_dir: folder for ``scores.csv``, ``scores.nc``, ``report.md`` and ``figures/``.
        options: thresholds, FSS windows, SSIM/PSNR data range, OpenSTL scores,
            support (common per case, or each file's own) and aggregation
            (pooled or per-case mean).
        obs_label: how the report names the observations (e.g. the archive path).
        animate: add a forecast loop GIF to the report.
    """
    supports = case_supports(forecasts, options)
    cases = [score_case(forecast, obs, options, support) for forecast, support in zip(forecasts, supports)]
    scores = aggregate(cases, options.aggregate).assign_attrs(support=options.support)
    table, csv, netcdf = write_scores(scores, out_dir)
    report, figures = write_report(scores, table, cases, obs, out_dir, obs_label=obs_label, animate=animate)
    return VerificationResult(table, scores, csv, netcdf, report, figures)
