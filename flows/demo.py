"""The main job as a Prefect flow: ``python -m flows.demo --out outputs/demo``.

Each task is one step of :mod:`nowcast.demo`; Prefect adds logging, retries
and a run record. Runs on Prefect's temporary local API, offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast import demo
from prefect import flow, get_run_logger, task


@task(retries=1, retry_delay_seconds=2)
def make_archive(out: Path, cfg: demo.DemoConfig):
    return demo.make_archive(out, cfg)


@task
def train_models(store, reference_time, out: Path, cfg: demo.DemoConfig):
    return demo.train_models(store, reference_time, out, cfg, progress=False)


@task
def issue_forecasts(store, reference_time, runs, cfg: demo.DemoConfig):
    return demo.issue_forecasts(store, reference_time, runs, cfg)


@task(retries=2, retry_delay_seconds=2)
def write_products(forecasts, out: Path):
    return demo.write_products(forecasts, out)


@task
def verify(forecasts, store, out: Path, cfg: demo.DemoConfig):
    return demo.verify(forecasts, store, out, cfg)


@flow(name="nowcast-demo", log_prints=False)
def demo_flow(out_dir: str = "outputs/demo", size: int = 256, models: list[str] | None = None,
              epochs: int = 5, steps_per_epoch: int | None = None, seed: int = 7) -> dict:
    """Synthetic radar → archive → nowcasts → products → scores and maps."""
    logger = get_run_logger()
    cfg = demo.DemoConfig(size=size, models=tuple(demo.DEFAULT_MODELS if models is None else models),
                          epochs=epochs, steps_per_epoch=steps_per_epoch, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store, reference_time = make_archive(out, cfg)
    runs = train_models(store, reference_time, out, cfg)
    forecasts = issue_forecasts(store, reference_time, runs, cfg)
    netcdf, tiffs = write_products(forecasts, out)
    table, csv, js, maps = verify(forecasts, store, out, cfg)
    logger.info("skill summary:\n%s", demo.summarise(table).round(3).to_string())
    return {"forecasts": {k: str(v) for k, v in netcdf.items()}, "geotiffs": len(tiffs),
            "scores": str(csv), "maps": [str(m) for m in maps]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=demo_flow.__doc__)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--models", default=",".join(demo.DEFAULT_MODELS))
    args = parser.parse_args()
    print(demo_flow(out_dir=args.out, size=args.size, models=[m for m in args.models.split(",") if m]))
