"""``nowcast train``: fit a model preset on an archive (also under ``torchrun`` for several GPUs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nowcast.cli import app, fail


def _fractions(split: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0:
        fail(f"--split takes three fractions (train, validation, test), e.g. 0.8,0.1,0.1; got {split!r}")
    return fractions


@app.command()
def train(
    archive: Path = typer.Argument(..., help="Zarr archive of observations (nowcast ingest / archive.write)."),
    model: str = typer.Option(..., "--model", "-m", help="Model preset (nowcast models), e.g. tau-radar."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for checkpoints and the metrics log."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: the paper's)."),
    steps_per_epoch: Optional[int] = typer.Option(None, help="Batches per epoch (default: one pass)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process (default: the paper's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the paper's)."),
    t_in: Optional[int] = typer.Option(None, help="Input frames (default: the preset's)."),
    t_out: Optional[int] = typer.Option(None, help="Output frames (default: the preset's)."),
    patch: Optional[int] = typer.Option(None, help="Training tile size in cells (default: the preset's frame size)."),
    min_wet_fraction: float = typer.Option(0.0, help="Drop training tiles with a smaller wet fraction."),
    split: str = typer.Option("0.8,0.1,0.1", help="Train, validation and test fractions of the time axis."),
    block: Optional[str] = typer.Option(None, help="Split train/val/test by shuffled blocks of this duration "
                                                   "(e.g. 1D) or 'event' (each gapless run), or 'each-event' "
                                                   "(each run cut chronologically) (default: chronological)."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this (default: off, "
                                                         "as in the papers' code)."),
    input_phase_loss: Optional[bool] = typer.Option(
        None, "--input-phase-loss/--forecast-loss-only",
        help="MS-LSTM: train on the input phase's one-step outputs too, as the reference code (default), "
             "or on the forecast frames only."),
    loss: str = typer.Option("paper", help="paper (default: each family's own), or mse, mae (median "
                                            "forecasts: lower MAE, sharper rain edges) or quantile."),
    quantile: Optional[float] = typer.Option(
        None, help="The quantile in (0, 1) of --loss quantile, e.g. 0.6: above the median, a larger rain area "
                   "(CSI rewards it)."),
    ema: Optional[float] = typer.Option(
        None, help="Forecast with an exponential moving average of the weights, this decay per step (e.g. 0.999; "
                   "default: off, as the papers)."),
    frame: Optional[str] = typer.Option(
        None, help="eulerian (default, the papers'), lagrangian: learn the evolution of rain advected along "
                   "its optical flow (radar only), or anomaly: learn departures from the weekly cycle (crowd "
                   "flows with 4 weeks of history); forecasts apply the checkpoint's frame."),
    frame_cache: Optional[Path] = typer.Option(
        None, help="Folder of the Lagrangian-frame window cache (default: ARCHIVE.lagrangian beside the archive)."),
    augment: str = typer.Option("none", help="none (default, the papers'), or dihedral: each batch in a random "
                                             "flip or quarter turn (radar; not for crowd flows)."),
    lagrangian_loss: str = typer.Option(
        "observed", help="Lagrangian frame: advect the network's outputs forward as forecasts do and score them "
                         "against the observed targets (observed, default, LUPIN's) or score them against the "
                         "targets advected back to the issue time (advected, L-CNN's)."),
    patience: int = typer.Option(10, help="Early stopping: epochs without a lower validation loss (0: never)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    amp: str = typer.Option("auto", help="auto (bf16 on CUDA), bf16, fp16 or off."),
    compile: bool = typer.Option(False, "--compile", help="Use torch.compile."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    time_budget: Optional[float] = typer.Option(
        None, help="Minutes of wall time: then stop cleanly (best.pt kept, --resume continues)."),
    checkpoint_every: Optional[int] = typer.Option(
        None, min=1, help="Also checkpoint (last.pt) every N steps, not only every epoch."),
    seed: int = typer.Option(0, help="Seed of initialisation and sample order."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN/tensorboard."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train MODEL on ARCHIVE into OUT (paper optimiser, schedule and loss; resumable; DDP under torchrun)."""
    from rich.console import Console
    from rich.table import Table

    from nowcast.archive import ArchiveError
    from nowcast.checkpoint import CheckpointError
    from nowcast.schema import SchemaError
    from nowcast.training import train as run_training

    try:
        result = run_training(
            archive, model, out, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr,
            t_in=t_in, t_out=t_out, patch=patch, min_wet_fraction=min_wet_fraction,
            fractions=_fractions(split), block=block, grad_clip=grad_clip, input_phase_loss=input_phase_loss,
            loss=loss, quantile=quantile, ema=ema, patience=patience or None, device=device, amp=amp,
            compile=compile, resume=resume, seed=seed, num_workers=workers, tensorboard=tensorboard,
            progress=progress, frame=frame, frame_cache=frame_cache, augment=augment, lagrangian_loss=lagrangian_loss,
            time_budget=time_budget, checkpoint_every=checkpoint_every)
    except (ArchiveError, CheckpointError, SchemaError, FileExistsError, KeyError, ValueError) as err:
        fail(str(err).strip("'\""))
    if int(os.environ.get("RANK", "0")):
        return
    console = Console()
    stop = " (early stop)" if result.stopped_early else " (time budget spent)" if result.stopped_by_budget else ""
    table = Table(title=f"{model}: {len(result.history)} epochs{stop}")
    for column in ("epoch", "train loss", "val loss", "samples/s"):
        table.add_column(column, justify="right")
    for row in result.history:
        table.add_row(str(row["epoch"]), f"{row['train_loss']:.5f}", f"{row['val_loss']:.5f}",
                      f"{row['samples_per_s']:.1f}")
    console.print(table)
    console.print(f"best checkpoint  {result.best_checkpoint}")
    console.print(f"metrics          {result.run_dir / 'metrics.csv'}")
