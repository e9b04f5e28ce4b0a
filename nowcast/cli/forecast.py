"""``nowcast forecast`` (nowcasts at one or many issue times) and ``nowcast serve`` (scheduled nowcasts)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import List, Optional

import typer

from nowcast.cli import app, fail


@app.command()
def forecast(
    archive: Path = typer.Argument(..., help="Zarr archive of observations."),
    checkpoint: Optional[List[Path]] = typer.Option(
        None, "--checkpoint", "-c", help="Run folder or .pt file (repeatable; none: the baselines only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Products go to OUT/<issue time>/."),
    at: Optional[List[str]] = typer.Option(None, help="Issue time, UTC ISO 8601 (repeatable; default: the "
                                                      "newest archived frame)."),
    start: Optional[str] = typer.Option(None, help="First issue time of a series (with --end, --every)."),
    end: Optional[str] = typer.Option(None, help="Last issue time of a series (default: the newest frame)."),
    every: Optional[str] = typer.Option(None, help="Spacing of the series, e.g. 30min (default: the time step)."),
    leads: Optional[int] = typer.Option(None, help="Lead times (default: the models' output frames, else 12)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Also issue persistence and Lagrangian extrapolation (historical "
                                        "average for crowd flows)."),
    formats: str = typer.Option("netcdf,geotiff", "--format", help="Comma-separated: netcdf, geotiff, webmap."),
    webmap: bool = typer.Option(False, "--webmap", help="Add web-map images (EPSG:3857 PNG, world file, .prj)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace products already issued at that time."),
) -> None:
    """Nowcast at each issue time with every checkpoint and the baselines; write products per issue time.

    A method whose input frames are incomplete is skipped and named; the others are still issued.
    """
    from rich.console import Console
    from rich.table import Table

    from nowcast import forecast as fc
    from nowcast.archive import ArchiveError
    from nowcast.checkpoint import CheckpointError
    from nowcast.schema import SchemaError

    checkpoint = checkpoint or []
    chosen = [f for f in formats.split(",") if f] + (["webmap"] if webmap else [])
    try:
        issues = fc.issue_nowcasts(archive, checkpoint, out, at=at or (), start=start, end=end, every=every,
                                   n_leads=leads, include_baselines=baselines, formats=chosen, device=device,
                                   overwrite=overwrite, extra={"archive": str(archive),
                                                               "checkpoints": [str(c) for c in checkpoint]})
    except (ArchiveError, CheckpointError, SchemaError, FileExistsError, ValueError) as err:
        fail(str(err))
    table = Table(title=f"Nowcasts from {archive} → {out}")
    for column in ("issued (UTC)", "methods", "not issued"):
        table.add_column(column)
    for issue in issues:
        table.add_row(f"{issue.reference_time:%Y-%m-%d %H:%M}", ", ".join(issue.methods) or "-",
                      "\n".join(f"{name}: {why}" for name, why in issue.skipped.items())
                      or ("" if issue.issued else issue.reason))
    Console(width=max(Console().width, 160)).print(table)
    if not any(issue.issued for issue in issues):
        reasons = "; ".join(issue.reason for issue in issues)
        fail(reasons + (" (pass --overwrite to replace them)" if "already exist" in reasons else ""))


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
    checkpoint: Optional[List[Path]] = typer.Option(
        None, "--checkpoint", "-c", help="Run folder or .pt file (repeatable; none: the baselines only)."),
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
        deploy.serve(archive, checkpoint or [], out, interval=interval, cron=cron, name=name, n_leads=leads,
                     baselines=baselines)
    except RuntimeError as err:
        fail(str(err))
