"""Ready for a lent GPU: throughput of every paper preset and a short real-data training, in under 10 min.

    python bench/gpu.py                      # on the GPU machine: writes bench/results/gpu-<device>.md
    python bench/gpu.py --dry-run --out DIR  # CPU, tiny presets, 1-2 steps, no compile: checks the script

* Throughput: samples/s of an eval forward and of a training step (forward,
  paper loss, backward, Adam) at each preset's paper batch size, with bf16
  autocast + channels_last, then also ``torch.compile`` (``bench/models.py``'s
  ``measure``), each preset in a fresh process with a time limit (a compile
  that does not finish in time is reported as such, not waited for); peak
  memory is ``torch.cuda.max_memory_allocated`` over the training steps.
* Training: one full radar preset (``--train-preset``, default tau-radar) on
  the real KNMI 2010-08-26 event (2 km cells, 128 x 128 patches) for
  ``--train-min`` minutes through :func:`nowcast.training.train`
  (``time_budget``, bf16 autocast, checkpoints every 50 steps).

A global deadline (``--budget-min``) skips presets that no longer fit and says so.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.models import machine, measure  # noqa: E402
from nowcast.models import PRESETS  # noqa: E402
from nowcast.training import train, training_defaults  # noqa: E402

PAPER_PRESETS = [name for name in PRESETS if not name.endswith("-tiny")]
DRY_PRESETS = ["tau-tiny", "stlight-tiny", "mslstm-tiny"]
VARIANTS = {"amp": "bf16 + channels_last", "compile": "bf16 + channels_last + torch.compile"}


def _worker(queue, name: str, variant: str, device: str, batch: int, steps: int, warmup: int) -> None:
    queue.put(measure(name, variant, device, batch, steps, warmup, None))


def timed(name: str, variant: str, device: str, batch: int, steps: int, warmup: int,
          timeout: float | None) -> dict:
    """``measure`` in a fresh process killed after ``timeout`` s (in this process when None)."""
    if timeout is None:
        return {**measure(name, variant, device, batch, steps, warmup, None), "status": "ok"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(queue, name, variant, device, batch, steps, warmup))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"status": f"over {timeout:.1f} s"}
    return {**queue.get(), "status": "ok"} if not queue.empty() else {"status": f"failed (exit {proc.exitcode})"}


def throughput(presets: list[str], device: str, variants: list[str], steps: int, warmup: int, deadline: float,
               per_preset_s: float | None, batch: int | None) -> list[dict]:
    """One row per preset and variant; rows past the deadline say they were not run."""
    rows = []
    for name in presets:
        size = batch or training_defaults(name).batch_size
        for variant in variants:
            left = deadline - time.monotonic()
            if per_preset_s is not None and left < 20:
                rows.append({"preset": name, "variant": variant, "batch": size, "status": "not run (budget)"})
                continue
            r = timed(name, variant, device, size, steps, warmup,
                      None if per_preset_s is None else min(per_preset_s, left))
            rows.append({"preset": name, "variant": variant, "batch": size, **r})
            print(f"{name:20s} {VARIANTS[variant]:38s} {r['status']:>12s} "
                  + (f"fwd {r['forward']:9.1f}/s train {r['train']:9.1f}/s peak {r['peak_bytes'] / 2**20:8.0f} MiB"
                     if "train" in r else ""), flush=True)
    return rows


def radar_data(data: Path, work: Path):
    """The KNMI 2010-08-26 event in mm h-1 at 2 km (rain rates straight from the archive)."""
    from nowcast import archive
    from nowcast.ingest import ingest

    store = work / "knmi.zarr"
    ingest("knmi", [data / "radar" / "KNMI" / "2010" / "08"], store, coarsen=2)
    return archive.open_archive(store).load()


def short_training(preset: str, obs, device: str, minutes: float, work: Path, **options) -> dict:
    """Train ``preset`` for ``minutes`` (time budget) and report what it did."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(obs, preset, work / preset, device=device, progress=False, time_budget=minutes,
                   checkpoint_every=50, **options)
    from nowcast.checkpoint import load_checkpoint

    last = load_checkpoint(result.last_checkpoint)
    return {"preset": preset, "steps": last["step"], "epochs": len(result.history),
            "seconds": time.perf_counter() - start, "history": result.history,
            "budget": result.stopped_by_budget,
            "peak_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None}


def to_markdown(rows: list[dict], run: dict, command: str, device: str, dry: bool, total_s: float) -> str:
    title = "CPU dry run of bench/gpu.py (tiny presets; not GPU numbers)" if dry else \
        "GPU throughput of the paper presets and a short real-data training"
    lines = [f"# {title}", "", f"Machine: {machine(device)}; 1-min load average {os.getloadavg()[0]:.1f}.",
             f"Command: `{command}`; total {total_s / 60:.1f} min.", "",
             "Samples per second at each preset's paper batch size (eval forward; training step = forward, "
             "paper loss, backward, Adam); peak memory of the training steps.", "",
             "| preset | batch | variant | forward/s | train/s | peak MiB | status |",
             "|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if "train" in r:
            peak = f"{r['peak_bytes'] / 2**20:,.0f}" if r["peak_bytes"] >= 0 else "–"
            lines.append(f"| {r['preset']} | {r['batch']} | {VARIANTS[r['variant']]} | {r['forward']:,.1f} | "
                         f"{r['train']:,.1f} | {peak} | ok |")
        else:
            lines.append(f"| {r['preset']} | {r['batch']} | {VARIANTS[r['variant']]} | – | – | – | "
                         f"{r['status']} |")
    peak = f", peak {run['peak_bytes'] / 2**30:.1f} GiB" if run["peak_bytes"] is not None else ""
    lines += ["", f"## Training {run['preset']}", "",
              f"{run['steps']} steps ({run['epochs']} whole epochs) in {run['seconds']:.0f} s"
              f"{' (time budget spent)' if run['budget'] else ''}{peak}.", "",
              "| epoch | step | train loss | val loss | samples/s |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | "
              f"{h['samples_per_s']:.1f} |" for h in run["history"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny presets, 1-2 steps, synthetic data, no torch.compile (minutes on a CPU)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), metavar="PRESET")
    parser.add_argument("--train-preset", default="tau-radar")
    parser.add_argument("--train-min", type=float, default=2.5, help="minutes of the real-data training")
    parser.add_argument("--budget-min", type=float, default=9.5, help="the whole script, including the training")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "NOWCAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    start = time.monotonic()
    device = "cpu" if args.dry_run else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --dry-run to check the script on the CPU")
    deadline = start + 60 * (args.budget_min - (0 if args.dry_run else args.train_min + 1.0))
    with tempfile.TemporaryDirectory(prefix="nowcast-gpu-") as tmp:
        work = Path(tmp)
        if args.dry_run:
            from nowcast.synthetic import synthetic_radar

            rows = throughput(args.presets or DRY_PRESETS, device, ["amp"], steps=1, warmup=1,
                              deadline=deadline, per_preset_s=None, batch=1)
            run = short_training("tau-tiny", synthetic_radar(40, size=32, seed=0), device, 1.0, work,
                                 epochs=1, steps_per_epoch=2, batch_size=2, fractions=(0.7, 0.3, 0.0))
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            rows = throughput(args.presets or PAPER_PRESETS, device, list(VARIANTS), steps=5, warmup=2,
                              deadline=deadline, per_preset_s=60.0, batch=None)
            run = short_training(args.train_preset, radar_data(args.data, work), device, args.train_min, work,
                                 fractions=(0.85, 0.15, 0.0), val_samples=64)
    name = "cpu-dryrun" if args.dry_run else \
        re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    command = "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = to_markdown(rows, run, command.strip(), device, args.dry_run, time.monotonic() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu-{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
