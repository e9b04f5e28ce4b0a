"""The main job on embedded data: synthetic radar → archive → nowcasts → products → scores → map.

Each step is a plain function so the CLI (``nowcast demo``) and the Prefect
flow (``flows/demo.py``) compose the same code; :func:`run_demo` runs them in
order. Everything runs offline on a 2-core CPU in a few minutes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import xarray as xr

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("stlight-tiny", "mslstm-tiny", "tau-tiny")
# Optimiser steps per epoch by family: about a minute of 2-core CPU each
# (an MS-LSTM step, recurrent over 18 frames, costs ~30 STLight steps).
DEMO_STEPS = {"stlight": 120, "tau": 60, "mslstm": 20}


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    size: int = 256
    n_history: int = 144
    n_leads: int = 12
    t_in: int = 6
    seed: int = 7
    models: Sequence[str] = DEFAULT_MODELS
    # Small models on little data: learn how rain evolves along its motion, not how it moves.
    frame: str = "lagrangian"
    # A short CPU budget: the demo shows the pipeline, bench/skill measures skill.
    epochs: int = 5
    steps_per_epoch: int | None = None
    batch_size: int = 4
    patch: int = 32
    # Time blocks for training and early stopping; the forecast case itself
    # lies after the history and is never seen in training.
    fractions: tuple[float, float, float] = (0.85, 0.15, 0.0)
    thresholds: Sequence[float] = (1.0, 5.0)


@dataclass
class DemoResult:
    """What the demo wrote, and its skill table."""

    out_dir: Path
    archive: Path
    forecasts: dict[str, Path] = field(default_factory=dict)
    geotiffs: list[Path] = field(default_factory=list)
    maps: list[Path] = field(default_factory=list)
    scores_csv: Path | None = None
    scores_json: Path | None = None
    summary: pd.DataFrame | None = None


def make_archive(out_dir: Path, cfg: DemoConfig) -> tuple[Path, pd.Timestamp]:
    """Write synthetic radar (history plus the verifying truth) to a Zarr archive.

    Returns the archive path and the forecast reference time: the time of the
    last frame the models may see; the ``n_leads`` frames after it are truth.
    """
    from nowcast import archive
    from nowcast.synthetic import synthetic_radar

    obs = synthetic_radar(cfg.n_history + cfg.n_leads, size=cfg.size, seed=cfg.seed)
    store = out_dir / "archive.zarr"
    archive.write(obs, store)
    reference_time = pd.Timestamp(obs["time"].values[cfg.n_history - 1])
    return store, reference_time


def train_models(store: Path, reference_time: pd.Timestamp, out_dir: Path, cfg: DemoConfig,
                 progress: bool = True) -> dict[str, Path]:
    """Train each model preset on the archive up to ``reference_time``; return run folders.

    In the Lagrangian frame the presets share one window cache, ``out_dir/lagrangian-cache``.
    """
    from nowcast import archive
    from nowcast.models import family_of
    from nowcast.training import train

    # 144 frames of 256 x 256 are ~40 MB: train from memory, not from Zarr per sample.
    history = archive.open_archive(store).sel(time=slice(None, reference_time)).load()
    runs = {}
    for preset in cfg.models:
        steps = cfg.steps_per_epoch or DEMO_STEPS.get(family_of(preset), 20)
        result = train(history, preset, out_dir / "runs" / preset, epochs=cfg.epochs,
                       steps_per_epoch=steps, batch_size=cfg.batch_size,
                       t_in=cfg.t_in, t_out=cfg.n_leads, patch=cfg.patch, fractions=cfg.fractions,
                       device="auto", seed=cfg.seed, progress=progress, frame=cfg.frame,
                       frame_cache=out_dir / "lagrangian-cache")
        runs[preset] = Path(result.run_dir)
    return runs


def issue_forecasts(store: Path, reference_time: pd.Timestamp, runs: dict[str, Path],
                    cfg: DemoConfig) -> dict[str, xr.Dataset]:
    """Nowcasts of every trained model plus persistence and Lagrangian extrapolation."""
    from nowcast import archive
    from nowcast.forecast import forecast_with_baselines

    obs = archive.open_archive(store).sel(time=slice(None, reference_time))
    return forecast_with_baselines(obs, list(runs.values()), at=reference_time, n_leads=cfg.n_leads)


def write_products(forecasts: dict[str, xr.Dataset], out_dir: Path) -> tuple[dict[str, Path], list[Path]]:
    """CF-NetCDF per method and one GeoTIFF per lead time per method, all or nothing, under ``forecasts/``."""
    from nowcast.forecast import write_products as write_all

    folder = write_all(forecasts, out_dir / "forecasts", overwrite=True)
    netcdf = {name: folder / f"{name}.nc" for name in forecasts}
    return netcdf, sorted((folder / "geotiff").rglob("*.tif"))


def verify(forecasts: dict[str, xr.Dataset], store: Path, out_dir: Path,
           cfg: DemoConfig) -> tuple[pd.DataFrame, Path, Path, list[Path]]:
    """Score every method against the truth; write CSV/JSON and the maps."""
    from nowcast import archive
    from nowcast.maps import plot_forecast_panels, plot_scores_vs_lead
    from nowcast.plots import is_baseline
    from nowcast.products.atomic import atomic_path, write_text_atomic
    from nowcast.verification import common_support, score_forecast, scores_table

    obs = archive.open_archive(store)
    table = pd.concat([scores_table(score_forecast(fc, obs, thresholds=cfg.thresholds), method=name)
                       for name, fc in common_support(forecasts).items()], ignore_index=True)
    csv, js = out_dir / "scores.csv", out_dir / "scores.json"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(js, json.dumps(table.to_dict(orient="records"), indent=1, default=str))
    # Every method, models first: a map that shows only the best model hides how the others behave.
    panels = {name: forecasts[name] for name in sorted(forecasts, key=is_baseline)}
    maps = [plot_forecast_panels(panels, obs, out_dir / "maps" / "forecast_vs_observation.png"),
            plot_scores_vs_lead(table, out_dir / "maps" / "csi_vs_lead.png", metric="csi", threshold=1.0)]
    return table, csv, js, maps


def summarise(table: pd.DataFrame, leads_min: Sequence[int] = (5, 30, 60)) -> pd.DataFrame:
    """Methods × (CSI at 1 mm/h, MAE) at a few lead times, for the end-of-run table."""
    rows = table[((table.metric == "csi") & (table.threshold == 1.0)) | (table.metric == "mae")]
    rows = rows[rows.lead_min.isin(leads_min)]
    wide = rows.pivot_table(index="method", columns=["metric", "lead_min"], values="value")
    wide.columns = [f"{m.upper()} +{lead}min" for m, lead in wide.columns]
    return wide.sort_values(wide.columns[0], ascending=False)


Step = Callable[[str], None]


def run_demo(out_dir: str | Path, cfg: DemoConfig | None = None, *, on_step: Step | None = None,
             progress: bool = True) -> DemoResult:
    """Run the whole main job into ``out_dir``; ``on_step`` is told each step's name."""
    cfg = cfg or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tell = on_step or (lambda name: log.info("%s", name))
    tell("synthetic radar → archive")
    store, reference_time = make_archive(out, cfg)
    result = DemoResult(out_dir=out, archive=store)
    from nowcast.models import family_of

    budget = ", ".join(f"{m} {cfg.epochs} x {cfg.steps_per_epoch or DEMO_STEPS.get(family_of(m), 20)} steps"
                       for m in cfg.models)
    tell(f"training in the {cfg.frame} frame ({budget}; a short CPU budget, minutes)" if cfg.models
         else "no deep models")
    runs = train_models(store, reference_time, out, cfg, progress=progress)
    tell(f"nowcasts issued at {reference_time:%Y-%m-%d %H:%M} UTC")
    forecasts = issue_forecasts(store, reference_time, runs, cfg)
    tell("products: CF-NetCDF and GeoTIFF")
    result.forecasts, result.geotiffs = write_products(forecasts, out)
    tell("verification and maps")
    table, result.scores_csv, result.scores_json, result.maps = verify(forecasts, store, out, cfg)
    result.summary = summarise(table)
    return result
