"""Lagrangian versus Eulerian frame: one model family, the same steps, the held-out radar events of bench/skill.py.

Same data as ``bench/skill.py`` (its :func:`rain_event`, :func:`stacked` and
:func:`score_cases`): train on KNMI 2010-08-26 + MeteoSwiss 2015-05-15 (4 km,
64 x 64 crops), score on MeteoSwiss 2016-07-11 and FMI 2016-09-28; 6 frames in,
12 out. The training events are written to a Zarr archive first, so the
Lagrangian run builds its window cache beside it, as a user's would; its build
time and size are reported. Writes ``bench/results/lagrangian-frame-<device>.md``.

    python bench/lagrangian_frame.py --model stlight-tiny --steps 150
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nowcast import archive
from nowcast.training import train

sys.path.insert(0, str(Path(__file__).parent))
from skill import PATCH, T_IN, T_OUT, TEST_EVENTS, TRAIN_EVENTS, rain_event, score_cases, stacked  # noqa: E402

log = logging.getLogger("bench.lagrangian_frame")
LEADS_MIN = (5, 15, 30, 45, 60)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def markdown(frame: pd.DataFrame) -> str:
    """A plain markdown table (numbers to 3 significant digits; blank for missing)."""
    cells = [[("" if pd.isna(v) else f"{v:.3g}") if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
                     + ["| " + " | ".join(row) + " |" for row in cells])


def table(scores: pd.DataFrame, methods: list[str]) -> str:
    """Markdown: CSI >= 1 mm/h and MAE per method at a few lead times."""
    lines = []
    for metric, threshold in (("csi", 1.0), ("mae", None)):
        sel = scores[scores.metric == metric]
        if threshold is not None:
            sel = sel[np.isclose(sel.threshold, threshold)]
        wide = sel.pivot_table(index="method", columns="lead_min", values="value").reindex(methods)
        wide = wide[[c for c in LEADS_MIN if c in wide.columns]]
        label = "CSI >= 1 mm/h" if threshold else "MAE (mm/h)"
        lines += [f"**{label}**", "", "| method | " + " | ".join(f"+{c} min" for c in wide.columns) + " |",
                  "|---|" + "---|" * len(wide.columns)]
        lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in wide.loc[m]) + " |" for m in wide.index]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "NOWCAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--model", default="stlight-tiny")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps, the same for both frames")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--case-stride", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("nowcast.lagrangian").setLevel(logging.INFO)
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="nowcast-lagrangian-"))
    try:
        events = {name: rain_event(name, args.data, work) for name in TRAIN_EVENTS + TEST_EVENTS}
        store = work / "train.zarr"
        archive.write(stacked([events[n] for n in TRAIN_EVENTS]), store)
        runs, rows = {}, []
        for frame in ("eulerian", "lagrangian"):
            started = time.perf_counter()
            result = train(store, args.model, work / frame / args.model, epochs=1, steps_per_epoch=args.steps,
                           batch_size=args.batch_size, t_in=T_IN, t_out=T_OUT, patch=PATCH,
                           fractions=(1.0, 0.0, 0.0), patience=None, device=args.device, progress=False,
                           frame=frame)
            seconds = time.perf_counter() - started
            epoch = result.history[-1]
            row = {"frame": frame, "steps": epoch["step"], "train_s": seconds, "epoch_s": epoch["seconds"],
                   "final_train_loss": epoch["train_loss"]}
            cache = next(iter(Path(f"{store}.lagrangian").glob("*.zarr")), None) if frame == "lagrangian" else None
            if cache is not None:
                import zarr

                attrs = zarr.open_group(str(cache), mode="r").attrs
                row.update(cache_windows=attrs["windows"], cache_build_s=attrs["build_seconds"],
                           cache_mb=sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20)
            rows.append(row)
            runs[frame] = result.run_dir
            log.info("%s", row)
        renamed = {}
        for frame, run in runs.items():  # forecast_with_baselines names a model by its run folder on a clash
            target = work / "runs" / f"{args.model}-{frame}"
            target.parent.mkdir(exist_ok=True)
            shutil.copytree(run, target)
            renamed[frame] = target
        scores, cases = score_cases({n: events[n] for n in TEST_EVENTS}, list(renamed.values()), T_OUT, T_IN,
                                    args.case_stride, args.device, (1.0,), (16.0,))
        scores["method"] = scores.method.replace({args.model: f"{args.model}-eulerian"})  # the first keeps its name
        methods = list(dict.fromkeys(scores.method))
        training = pd.DataFrame(rows)
        report = [
            f"# Lagrangian vs Eulerian frame: {args.model}, {args.steps} steps each", "",
            f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, device {args.device}; {load_before} at the start, "
            f"{load_average()} at the end (shared with other engineers' runs).", "",
            f"Train: {' + '.join(TRAIN_EVENTS)} ({T_IN} -> {T_OUT} frames, {PATCH} x {PATCH} patches, batch "
            f"{args.batch_size}); held out: {', '.join(TEST_EVENTS)}, {cases} issue times (case stride "
            f"{args.case_stride}), all methods scored on the same cells.", "",
            markdown(training), "",
            table(scores, methods),
            f"Run: `python bench/lagrangian_frame.py --model {args.model} --steps {args.steps}`", "",
        ]
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"lagrangian-frame-{args.device}.md"
        path.write_text("\n".join(report))
        print("\n".join(report))
        log.info("wrote %s", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
