"""``nowcast forecast`` (one nowcast from an archive) and ``nowcast serve`` (scheduled nowcasts)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import List, Optional

import typer

from nowcast.cli import app
from nowcast.cli.train import fail


@app.command()
def forecast(
    archive: Path = typer.Argument(..., help="Zarr archive of observations."),
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", "-c", help="Run folder or .pt file (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Products go to OUT/<issue time>/."),
    at: Optional[str] = typer.Option(None, help="Issue time (UTC, ISO 8601) (default: the newest archived frame)."),
    leads: Optional[int] = typer.Option(None, help="Lead times (default: the models' output frames)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Also issue persistence and Lagrangian extrapolation."),
    formats: str = typer.Option("netcdf,geotiff", "--format", help="Comma-separated: netcdf, geotiff."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace products already issued at that time."),
) -> None:
    """Nowcast from the T_in frames ending at --at with every checkpoint (and the baselines); write products."""
    from rich.console import Console
    from rich.table import Table

    from nowcast import forecast as fc
    from nowcast.archive import ArchiveError, open_archive
    from nowcast.checkpoint import CheckpointError
    from nowcast.schema import SchemaError

    try:
        issue = fc.plan_issue(archive, checkpoint, out, at=at, overwrite=overwrite)
        if issue.skip:
            fail(issue.skip + (" (pass --overwrite to replace them)" if issue.folder.exists() else ""))
        forecasts = fc.forecast_with_baselines(open_archive(archive), checkpoint, at=issue.reference_time,
                                               n_leads=leads or issue.t_out, device=device,
                                               include_baselines=baselines)
        folder = fc.write_products(forecasts, issue.folder, formats=[f for f in formats.split(",") if f],
                                   overwrite=overwrite, extra={"archive": str(archive),
                                                               "checkpoints": [str(c) for c in checkpoint]})
    except (ArchiveError, CheckpointError, SchemaError, FileExistsError, ValueError) as err:
        fail(str(err))
    table = Table(title=f"Nowcasts issued at {issue.reference_time:%Y-%m-%d %H:%M} UTC → {folder}")
    for column in ("method", "leads", "mean", "max"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for name, ds in forecasts.items():
        values = ds[fc.data_variables(ds)[0]]
        table.add_row(name, str(ds.sizes["time"]), f"{float(values.mean()):.3f}", f"{float(values.max()):.3f}")
    Console().print(table)


def _flows_module(name: str):
    """Import ``flows.<name>``: installed, or from the source checkout this package lives in."""
    try:
        return importlib.import_module(f"flows.{name}")
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[2]
        if not (root / "flows" / f"{name}.py").exists():
            fail(f"cannot find the flows package (flows/{name}.py); run from the nowcast source folder")
        sys.path.insert(0, str(root))
        return importlib.import_module(f"flows.{name}")


@app.command()
def serve(
    archive: Path = typer.Argument(..., help="Zarr archive of observations (kept up to date by ingest)."),
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", "-c", help="Run folder or .pt file (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Products go to OUT/<issue time>/."),
    interval: float = typer.Option(300, help="Seconds between scheduled runs."),
    cron: Optional[str] = typer.Option(None, help="Cron schedule instead of --interval, e.g. '*/5 * * * *'."),
    name: str = typer.Option("scheduled", help="Deployment name."),
    leads: Optional[int] = typer.Option(None, help="Lead times (default: the models' output frames)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also issue the baselines."),
) -> None:
    """Serve scheduled nowcasts (a Prefect deployment) against the server at PREFECT_API_URL; blocks."""
    deploy = _flows_module("deploy")
    try:
        deploy.serve(archive, checkpoint, out, interval=interval, cron=cron, name=name, n_leads=leads,
                     baselines=baselines)
    except RuntimeError as err:
        fail(str(err))
