"""Training flow: ``python -m flows.train ARCHIVE --model PRESET --out RUN_DIR [--resume]``.

One task around :func:`nowcast.training.train`; Prefect adds the run record
and logs. A failed run is continued with ``resume=True`` (from ``last.pt``).
"""

from __future__ import annotations

import argparse

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast import training
from prefect import flow, get_run_logger, task


@task
def fit(archive: str, preset: str, out_dir: str, options: dict) -> dict:
    result = training.train(archive, preset, out_dir, progress=False, **options)
    return {"run_dir": str(result.run_dir), "best_checkpoint": str(result.best_checkpoint),
            "history": result.history, "stopped_early": result.stopped_early}


@flow(name="nowcast-train")
def train_flow(archive: str, preset: str, out_dir: str, epochs: int | None = None,
               steps_per_epoch: int | None = None, batch_size: int | None = None, lr: float | None = None,
               patch: int | None = None, resume: bool = False, seed: int = 0, device: str = "auto") -> dict:
    """Train ``preset`` on ``archive`` into ``out_dir`` (see ``nowcast train``)."""
    options = dict(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, patch=patch,
                   resume=resume, seed=seed, device=device)
    result = fit(archive, preset, out_dir, options)
    last = result["history"][-1] if result["history"] else {}
    get_run_logger().info("trained %s for %d epochs (last val loss %s); best checkpoint %s", preset,
                          len(result["history"]), last.get("val_loss"), result["best_checkpoint"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=train_flow.__doc__)
    parser.add_argument("archive")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    print(train_flow(args.archive, args.model, args.out, epochs=args.epochs,
                     steps_per_epoch=args.steps_per_epoch, resume=args.resume))
