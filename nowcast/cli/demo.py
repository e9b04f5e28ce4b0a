"""``nowcast demo``: the main job end to end on embedded synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from nowcast.cli import app, console


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out", help="Folder for the archive, products, scores and maps."),
    size: int = typer.Option(256, help="Grid size in 1-km cells (size × size)."),
    models: str = typer.Option("stlight-tiny,mslstm-tiny,tau-tiny",
                               help="Comma-separated model presets ('' for none)."),
    epochs: int = typer.Option(5, help="Training epochs per model."),
    steps_per_epoch: int = typer.Option(None, help="Optimiser steps per epoch (default: per model family)."),
    seed: int = typer.Option(7, help="Seed of the synthetic weather and of training."),
    frame: str = typer.Option("lagrangian", help="Frame the models learn in: lagrangian or eulerian."),
) -> None:
    """Synthetic radar → Zarr archive → deep-model and classic nowcasts → CF-NetCDF, GeoTIFF, scores and maps."""
    import logging
    import time

    from rich.logging import RichHandler
    from rich.table import Table

    from nowcast.demo import DemoConfig, run_demo

    term = console()
    cfg = DemoConfig(size=size, models=tuple(m for m in models.split(",") if m), epochs=epochs,
                     steps_per_epoch=steps_per_epoch, seed=seed, frame=frame)
    start = time.perf_counter()
    # Training and window-cache messages (per model and epoch), so the long step shows progress in logs too.
    handler = RichHandler(console=term, show_path=False, show_time=False)
    for name in ("nowcast.training", "nowcast.lagrangian"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    with term.status("starting") as status:
        def on_step(name: str) -> None:
            term.log(f"[bold]{name}")
            status.update(name)

        result = run_demo(out, cfg, on_step=on_step, progress=False)
    table = Table(title=f"Skill of the nowcast issued in the demo ({time.perf_counter() - start:.0f} s)")
    table.add_column("method")
    for column in result.summary.columns:
        table.add_column(column, justify="right")
    for method, row in result.summary.iterrows():
        table.add_row(method, *(f"{v:.3f}" for v in row.values))
    term.print(table)
    term.print(f"archive      {result.archive}")
    for name, path in result.forecasts.items():
        term.print(f"forecast     {path}  ({name})")
    term.print(f"geotiffs     {len(result.geotiffs)} files under {out / 'forecasts' / 'geotiff'}")
    term.print(f"scores       {result.scores_csv}, {result.scores_json}")
    for path in result.maps:
        term.print(f"map          {path}")
