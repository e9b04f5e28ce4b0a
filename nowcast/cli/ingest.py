"""``nowcast ingest``, ``nowcast sources`` and ``nowcast regrid``: real files into archives, archives onto grids."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nowcast.cli import app, fail


@app.command()
def sources() -> None:
    """List the sources ingest reads, with their file formats."""
    from rich.console import Console
    from rich.table import Table

    from nowcast.sources import ALIASES, SOURCES

    table = Table(title="nowcast sources (nowcast ingest SOURCE PATH... --out ARCHIVE)")
    for column in ("name", "aliases", "format", "what"):
        table.add_column(column)
    for name, source in SOURCES.items():
        aliases = ", ".join(a for a, target in ALIASES.items() if target == name)
        table.add_row(name, aliases, source.formats, source.description)
    Console().print(table)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="Source name (see `nowcast sources`), or 'auto' to detect it."),
    paths: Optional[list[Path]] = typer.Argument(None, help="Files and folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Archive (Zarr folder), created or appended to."),
    zr: Optional[str] = typer.Option(None, help="Reflectivity to rain rate: 'source' (the source's own Z-R), "
                                                "'marshall-palmer' (200, 1.6) or 'a,b'. Default: keep dBZ."),
    coarsen: Optional[int] = typer.Option(None, help="Block-average radar fields by this factor (MRMS: 4)."),
    qty: Optional[str] = typer.Option(None, help="ODIM quantity to read (RATE, ACRR, DBZH)."),
    holidays: Optional[Path] = typer.Option(None, help="Holiday list (YYYYMMDD per line) for traffic files."),
    batch_frames: Optional[int] = typer.Option(None, help="Frames per archive write (default ~64 MiB)."),
    workers: int = typer.Option(2, help="Files decoded at once."),
    processes: bool = typer.Option(False, "--processes", help="Decode in worker processes: a file that crashes "
                                   "its decoder (segfault) is reported and skipped instead of ending the ingest."),
    strict: bool = typer.Option(False, help="Stop at the first bad file instead of skipping it."),
) -> None:
    """Ingest files of one source into an archive. Bad files are reported and skipped (exit code 1)."""
    import logging

    from rich.console import Console
    from rich.table import Table

    from nowcast.archive import ArchiveError
    from nowcast.ingest import ingest as run_ingest
    from nowcast.sources import SourceError, get_source

    console = Console(soft_wrap=True)  # in logs, whole lines: paths are never cut
    logging.getLogger("nowcast.ingest").setLevel(logging.ERROR)  # skipped files go to the table below
    paths = list(paths or [])
    if source.lower() != "auto":
        try:
            get_source(source)
        except ValueError as err:
            if not Path(source).exists():
                fail(str(err), 2)
            paths, source = [Path(source)] + paths, "auto"
    options = {k: v for k, v in (("zr", zr), ("coarsen", coarsen), ("qty", qty), ("holidays", holidays))
               if v is not None}
    try:
        with console.status(f"ingesting into {out}"):
            report = run_ingest(None if source == "auto" else source, paths, out, batch_frames=batch_frames,
                                on_error="raise" if strict else "skip", workers=workers,
                                processes=processes, **options)
    except (SourceError, ArchiveError, ValueError) as err:
        fail(str(err), 2)
    console.print(f"[bold]{report.source}[/] -> {report.archive}: {report.frames_added} frames added from "
                  f"{len(report.ingested)} files; {len(report.unchanged)} already archived; "
                  f"{len(report.skipped)} skipped")
    if report.skipped:
        if console.is_terminal:
            table = Table(title="skipped files")
            table.add_column("file", overflow="fold")
            table.add_column("reason", overflow="fold")
            for path, reason in report.skipped:
                table.add_row(str(path), reason)
            console.print(table)
        else:  # logs: one whole line per file, never cut to a terminal width
            for path, reason in report.skipped:
                print(f"skipped {path}: {reason}")
        raise typer.Exit(1)


@app.command()
def regrid(
    archive: Path = typer.Argument(..., help="Source archive."),
    out: Path = typer.Option(..., "--out", "-o", help="Target archive (created or appended to)."),
    crs: Optional[str] = typer.Option(None, help="Target CRS (EPSG:3035, a PROJ string, WKT)."),
    resolution: Optional[float] = typer.Option(None, help="Cell size in target CRS units (m, or degrees)."),
    bounds: Optional[tuple[float, float, float, float]] = typer.Option(
        None, help="left bottom right top in target CRS units (default: the source's footprint)."),
    like: Optional[Path] = typer.Option(None, help="Take CRS, resolution and extent from this archive."),
    method: str = typer.Option("bilinear", help="bilinear, nearest, average (for coarsening) or cubic."),
) -> None:
    """Reproject an archive to another grid (CRS + resolution + extent)."""
    import pyproj
    from rich.console import Console

    from nowcast import archive as archives
    from nowcast.grids import Grid
    from nowcast.regrid import regrid_archive, target_grid

    try:
        source_grid = Grid.of(archives.open_archive(archive))
        if like is not None:
            grid = Grid.of(archives.open_archive(like))
        elif crs is None or resolution is None:
            fail("give --crs and --resolution (and optionally --bounds), or --like ARCHIVE", 2)
        else:
            grid = target_grid(source_grid, crs, resolution, bounds)
        with Console().status(f"regridding {archive} onto {grid.shape[1]} x {grid.shape[0]} cells"):
            added = regrid_archive(archive, out, grid, method)
    except (archives.ArchiveError, ValueError, pyproj.exceptions.CRSError) as err:
        fail(str(err), 2)
    Console().print(f"{added} frames regridded into {out} ({grid.crs.name}, {grid.shape[1]} x {grid.shape[0]}, "
                    f"{grid.resolution[0]:g} x {grid.resolution[1]:g})")
