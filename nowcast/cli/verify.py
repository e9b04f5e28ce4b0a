"""``nowcast verify``: score forecast files against an archive; table, NetCDF, figures and report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nowcast.cli import app, fail


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from None


@app.command()
def verify(
    forecasts: list[Path] = typer.Argument(..., help="Forecast CF-NetCDF files (any methods and issue times)."),
    obs: Path = typer.Option(..., "--obs", help="Observation archive (Zarr folder) covering the valid times."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for scores.csv, scores.nc, report.md and figures/."),
    thresholds: Optional[str] = typer.Option(None, help="Event thresholds, comma-separated, in the variable's "
                                                        "units (default: 1,5 for rain rate; none for flows)."),
    fss_scales_km: str = typer.Option("16", "--fss-scales-km", help="FSS window edges in km, comma-separated."),
    data_range: Optional[float] = typer.Option(None, help="Data range for SSIM and PSNR (skipped without it)."),
    openstl: bool = typer.Option(False, help="Add OpenSTL's per-frame summed MSE/MAE (mse_frame, mae_frame)."),
    support: str = typer.Option("common", help="common: score all methods of an issue time on the cells they "
                                               "all forecast; own: each file on its own valid cells."),
    aggregate: str = typer.Option("pooled", help="pooled: sums over all cases, then scores; mean: the mean "
                                                 "of per-case scores."),
    animate: bool = typer.Option(True, "--animate/--no-animate", help="Add a forecast loop GIF to the report."),
) -> None:
    """Score forecasts by method and lead time against observations; write a tidy table and a report."""
    import logging
    import time

    from rich.console import Console
    from rich.table import Table

    from nowcast.archive import ArchiveError, open_archive
    from nowcast.schema import SchemaError
    from nowcast.verification.report import VerificationError, VerifyOptions, verify_forecasts

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    thresholds_ = None if thresholds is None else _numbers(thresholds, "--thresholds")
    start = time.perf_counter()
    try:
        options = VerifyOptions(thresholds=thresholds_, fss_scales_km=_numbers(fss_scales_km, "--fss-scales-km"),
                                data_range=data_range, openstl=openstl, support=support, aggregate=aggregate)
        observations = open_archive(obs)
        with console.status(f"scoring {len(forecasts)} forecast(s) against {obs}"):
            result = verify_forecasts(forecasts, observations, out, options, obs_label=str(obs), animate=animate)
    except (VerificationError, ArchiveError, SchemaError) as err:
        fail(str(err), 2)
    table = result.table
    leads = sorted(table["lead_min"].unique())
    summary = Table(title=f"Verified {len(forecasts)} forecast(s) in {time.perf_counter() - start:.0f} s")
    last = table[table["lead_min"] == leads[-1]]
    columns = {}
    for metric in ("csi", "fss", "mae", "rmse", "crps"):
        rows = last[last["metric"] == metric]
        if rows.empty:
            continue
        threshold, scale = rows["threshold"].min(), rows["scale_km"].min()    # the first; NaN if none
        if threshold == threshold:
            rows = rows[rows["threshold"] == threshold]
        if scale == scale:
            rows = rows[rows["scale_km"] == scale]
        label = metric.upper() + (f" >= {threshold:g}" if threshold == threshold else "")
        columns[f"{label} +{leads[-1]:g} min"] = rows.set_index("method")["value"]
    summary.add_column("method")
    for label in columns:
        summary.add_column(label, justify="right")
    for method in result.scores["method"].values:
        summary.add_row(str(method), *(f"{values[method]:.3f}" if method in values.index else "-"
                                       for values in columns.values()))
    console.print(summary)
    console.print(f"table   {result.csv}\nscores  {result.netcdf}\nreport  {result.report} "
                  f"({len(result.figures)} figures)")
