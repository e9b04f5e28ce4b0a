"""``nowcast models``: the model presets with their sizes and paper training defaults."""

from __future__ import annotations

import typer

from nowcast.cli import app, console


@app.command()
def models(family: str = typer.Option(None, help="Only this family: tau, stlight or mslstm.")) -> None:
    """List model presets: frames in → out, input size, parameters (ours vs published; "(ours)" marks a
    count of our own where the paper gives none), training defaults."""
    from rich.table import Table

    from nowcast.models import list_presets
    from nowcast.transforms import TOP_QUANTILE

    table = Table(title="Model presets")
    for column in ("preset", "in→out", "C×H×W", "parameters", "published", "optimiser / schedule"):
        table.add_column(column, justify="right" if column in ("parameters", "published") else "left",
                         no_wrap=True)
    for info in list_presets():
        if family and info.family != family:
            continue
        train = info.training
        table.add_row(
            info.name, f"{info.t_in}→{info.t_out}", f"{info.channels}×{info.height}×{info.width}",
            f"{info.parameters:,}",
            f"{info.published_parameters:,}{' (ours)' if info.recount else ''}" if info.published_parameters else "—",
            f"{train.optimizer} lr {train.lr:g}, {train.schedule}, {train.epochs} ep" if train else "—")
    table.caption = (f"Scaling: rain rate dBR and accumulation log1p on fixed physical scales; crowd flow "
                     f"log1p, reflectivity min–max, their top the training split's "
                     f"{100 * TOP_QUANTILE:g} % quantile (larger values kept).")
    console().print(table)
