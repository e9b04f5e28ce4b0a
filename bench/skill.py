"""Skill on real data: tiny deep models versus persistence, Lagrangian extrapolation, historical average.

Radar (5-min sources, every frame in mm h-1, block-averaged 4 x 4 to 4 km and
cropped to the 64 x 64 cells (256 km) that hold the most rain of each event):

* train: KNMI 2010-08-26 00:00-07:35 (92 frames) + MeteoSwiss 2015-05-15 (40 frames);
* held out (never seen in training): MeteoSwiss 2016-07-11 and FMI 2016-09-28
  (40 frames each), every ``--case-stride``-th issue time whose 6 input frames
  and 12 following frames lie in the event; 6 frames in -> 12 out (30 -> 60 min).

TaxiNYC 2014 (hourly, 2 x 16 x 8 in/out flows): train on all but the last 4
weeks, score on the last 4 weeks (every ``--traffic-stride``-th hour), 4 in -> 4 out.

Each model trains for a fixed number of steps (``RADAR_STEPS``/``TRAFFIC_STEPS``
or ``--steps``), recorded in the output with its wall time, so a loaded machine
makes the run slower, not the models weaker. All methods of a radar case are
scored on the same cells (:func:`nowcast.verification.common_support`). Each
task writes ``bench/results/skill-<device>-<task>.csv`` and ``.json``;
``skill-<device>.md`` is rebuilt from the parts present, so ``--only`` reruns one.

    OMP_NUM_THREADS=2 python bench/skill.py --device cpu
    OMP_NUM_THREADS=2 python bench/skill.py --only traffic --models stlight-tiny --steps 200 --out /tmp/skill
"""

from __future__ import annotations

import argparse
import json
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
import xarray as xr

from nowcast import archive
from nowcast.checkpoint import load_checkpoint
from nowcast.forecast import forecast_with_baselines
from nowcast.ingest import ingest
from nowcast.schema import crs_of, data_variables, make_dataset
from nowcast.training import train
from nowcast.verification import accumulate, common_support, finalize, merge, scores_table
from nowcast.verification.score import default_metrics

log = logging.getLogger("bench.skill")

MODELS = ("tau-tiny", "stlight-tiny", "mslstm-tiny")
RADAR = {  # name: (reader, folder under data/radar, reader options)
    "knmi": ("knmi", "KNMI/2010/08", {}),
    "mch2015": ("mch", "mch/20150515", {}),
    "mch2016": ("mch", "mch/20160711", {}),
    "fmi": ("fmi", "fmi/pgm/20160928", {"zr": "source"}),
}
TRAIN_EVENTS = ("knmi", "mch2015")
TEST_EVENTS = ("mch2016", "fmi")
COARSEN, CROP, PATCH = 4, 64, 32
T_IN, T_OUT = 6, 12
TRAFFIC_T, HOLDOUT = 4, pd.Timedelta(weeks=4)
RAIN_THRESHOLDS, FSS_KM = (1.0, 5.0), (16.0,)
TASKS = ("radar", "traffic")
EPOCHS = 10
#: Training steps per model, fixed so that the whole run fits about 40 min on 2 loaded CPU cores.
RADAR_STEPS = {"tau-tiny": 600, "stlight-tiny": 2000, "mslstm-tiny": 200}
TRAFFIC_BATCH, TRAFFIC_TRANSFORM = 32, "minmax"
TRAFFIC_STEPS = {"tau-tiny": 6000, "stlight-tiny": 2000, "mslstm-tiny": 800}


def rain_event(name: str, data_root: Path, work: Path) -> xr.Dataset:
    """One radar event in mm h-1, 4 km, cropped to its rainiest 64 x 64 window, in memory."""
    reader, folder, options = RADAR[name]
    store = work / f"{name}.zarr"
    report = ingest(reader, [data_root / "radar" / folder], store, coarsen=COARSEN, **options)
    if report.skipped:
        log.warning(report.summary())
    ds = archive.open_archive(store).load()
    variable = data_variables(ds)[0]
    values = ds[variable].values.astype("f4")
    if variable == "accumulation":  # mm per 5 min -> mm h-1
        values = values * (pd.Timedelta(hours=1) / pd.Timedelta(ds.attrs["accumulation_period"]))
    elif variable != "rainrate":
        raise ValueError(f"{name}: expected rain rate or accumulation, got {variable}")
    wet = np.nan_to_num(values >= 1.0).sum(0).astype("f8")
    sums = np.pad(wet, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    box = sums[CROP:, CROP:] - sums[:-CROP, CROP:] - sums[CROP:, :-CROP] + sums[:-CROP, :-CROP]
    y0, x0 = np.unravel_index(np.argmax(box), box.shape)
    window = ds.isel(y=slice(y0, y0 + CROP), x=slice(x0, x0 + CROP))
    return make_dataset(values[:, y0:y0 + CROP, x0:x0 + CROP], times=window["time"].values,
                        x=window["x"].values, y=window["y"].values, crs=crs_of(ds), variable="rainrate",
                        source=name, time_step="5min")


def stacked(events: list[xr.Dataset]) -> xr.Dataset:
    """Training events one after another in time on the first event's nominal grid.

    The models see pixel arrays only; the events keep their own times (windows
    never cross the gaps between them) and NaN (no coverage) becomes dry.
    """
    first = events[0]
    values = np.concatenate([np.nan_to_num(e["rainrate"].values) for e in events])
    times = np.concatenate([e["time"].values for e in events])
    return make_dataset(values, times=times, x=first["x"].values, y=first["y"].values, crs=crs_of(first),
                        variable="rainrate", source="+".join(e.attrs["source"] for e in events),
                        time_step="5min")


def train_for(data: xr.Dataset, preset: str, out: Path, steps: int, device: str, epochs: int = EPOCHS,
              **options) -> dict:
    """Train ``preset`` for ``steps`` optimiser steps in ``epochs`` epochs; report what it did and took."""
    start = time.perf_counter()
    per_epoch = max(1, steps // epochs)
    result = train(data, preset, out, epochs=epochs, steps_per_epoch=per_epoch, device=device, progress=False,
                   patience=None, **options)
    seconds = time.perf_counter() - start
    done = result.history[-1]["step"]
    best = load_checkpoint(result.best_checkpoint)["epoch"]
    return {"model": preset, "steps": done, "s_per_step": sum(h["seconds"] for h in result.history) / done,
            "train_s": seconds, "final_train_loss": result.history[-1]["train_loss"],
            "best_epoch": f"{best}/{len(result.history)}", "run": str(result.run_dir)}


def score_cases(obs_by_event: dict[str, xr.Dataset], runs: list[Path], n_leads: int, t_in: int, stride: int,
                device: str, thresholds, fss_km, history: pd.Timedelta | None = None) -> tuple[pd.DataFrame, int]:
    """Forecast every model and baseline at each held-out issue time; pool the sums per method."""
    sums: dict[str, list[xr.Dataset]] = {}
    metrics = None
    cases = 0
    for obs in obs_by_event.values():
        times = pd.DatetimeIndex(obs["time"].values)
        step = times[1] - times[0]
        first = t_in - 1 if history is None else int(np.searchsorted(times, times[0] + history))
        for i in range(first, len(times) - n_leads, stride):
            at = times[i]
            if history is None:
                window = obs
            else:  # the historical average needs the 4 previous weeks
                window = obs.sel(time=slice(at - pd.Timedelta(weeks=4) - step, at + n_leads * step))
            fcs = forecast_with_baselines(window, runs, at=at, n_leads=n_leads, device=device)
            fcs = common_support(fcs)
            if metrics is None:
                metrics = default_metrics(next(iter(fcs.values())), thresholds=thresholds,
                                          fss_scales_km=fss_km, spectrum=False)
            for name, fc in fcs.items():
                sums.setdefault(name, []).append(accumulate(fc, window, metrics).compute())
            cases += 1
    tables = [scores_table(finalize(merge(parts), metrics), method=name) for name, parts in sums.items()]
    return pd.concat(tables, ignore_index=True), cases


def pivot(table: pd.DataFrame, rows: list[tuple[str, float | None, float | None]], methods: list[str]) -> str:
    """Markdown: one block per metric, methods as rows, lead times as columns."""
    out = []
    for metric, threshold, scale in rows:
        sel = table[table.metric == metric]
        if threshold is not None:
            sel = sel[np.isclose(sel.threshold, threshold)]
        if scale is not None:
            sel = sel[np.isclose(sel.scale_km, scale)]
        wide = sel.pivot_table(index="method", columns="lead_min", values="value").reindex(methods)
        label = metric.upper() + (f" >= {threshold:g}" if threshold is not None else "") + \
            (f", {scale:g} km" if scale is not None else "")
        out += [f"**{label}**", "", "| method | " + " | ".join(f"+{c} min" for c in wide.columns) + " |",
                "|---|" + "---|" * len(wide.columns)]
        out += [f"| {m} | " + " | ".join("n/a" if pd.isna(v) else f"{v:.3f}" for v in wide.loc[m]) + " |"
                for m in wide.index]
        out.append("")
    return "\n".join(out)


def run_radar(args, work: Path) -> tuple[pd.DataFrame, dict]:
    """Train on the training events, score every model and baseline on the held-out events."""
    t0 = time.perf_counter()
    events = {name: rain_event(name, args.data, work) for name in TRAIN_EVENTS + TEST_EVENTS}
    ingest_s = time.perf_counter() - t0
    rain_train = stacked([events[n] for n in TRAIN_EVENTS])
    trained = [train_for(rain_train, preset, work / "radar" / preset, args.steps or RADAR_STEPS[preset],
                         args.device, t_in=T_IN, t_out=T_OUT, patch=PATCH, fractions=(1.0, 0.0, 0.0))
               for preset in args.models]
    t1 = time.perf_counter()
    table, cases = score_cases({n: events[n] for n in TEST_EVENTS}, [Path(r["run"]) for r in trained], T_OUT,
                               T_IN, args.case_stride, args.device, RAIN_THRESHOLDS, FSS_KM)
    return table, {"trained": trained, "cases": cases, "ingest_s": ingest_s,
                   "score_s": time.perf_counter() - t1}


def run_traffic(args, work: Path) -> tuple[pd.DataFrame, dict]:
    """Train on TaxiNYC before the last 4 weeks (its last tenth validates), score on those weeks."""
    store = work / "taxinyc.zarr"
    ingest("taxibj", [args.data / "taxinyc" / "NYC14_Taxi_M16x8_T60_InOut.h5"], store)
    taxi = archive.open_archive(store).load()
    split = pd.Timestamp(taxi["time"].values[-1]) - HOLDOUT
    taxi_train = taxi.sel(time=slice(None, split))
    trained = [train_for(taxi_train, preset, work / "traffic" / preset,
                         args.steps or TRAFFIC_STEPS[preset], args.device, t_in=TRAFFIC_T, t_out=TRAFFIC_T,
                         fractions=(0.9, 0.1, 0.0), batch_size=args.traffic_batch,
                         transform=args.traffic_transform) for preset in args.models]
    t1 = time.perf_counter()
    held = taxi.sel(time=slice(split - HOLDOUT - pd.Timedelta(hours=TRAFFIC_T), None))
    table, cases = score_cases({"taxinyc": held}, [Path(r["run"]) for r in trained], TRAFFIC_T, TRAFFIC_T,
                               args.traffic_stride, args.device, (), (),
                               history=HOLDOUT + pd.Timedelta(hours=TRAFFIC_T))
    return table, {"trained": trained, "cases": cases, "split": f"{split:%Y-%m-%d %H:%M}",
                   "score_s": time.perf_counter() - t1}


def verdict(table: pd.DataFrame, task: str, models: list[str]) -> str:
    """The issue's target for ``task``, checked at every lead, with the margins that decide it."""
    if task == "radar":
        rules = [("csi", 1.0, "persistence"), ("fss", 1.0, "persistence")]
        goal, better = "at least matches persistence in CSI >= 1 mm/h and FSS (16 km)", np.greater_equal
    else:
        rules = [(m, None, ref) for m in ("rmse", "mae") for ref in ("persistence", "historical_average")]
        goal, better = "beats persistence and the historical average in RMSE and MAE", np.less
    wide = {}
    for metric, threshold, _ in rules:
        sel = table[table.metric == metric]
        if threshold is not None:
            sel = sel[np.isclose(sel.threshold, threshold)]
        wide[metric] = sel.pivot_table(index="method", columns="lead_min", values="value")
    wins = {m: sum(int(better(wide[metric].loc[m], wide[metric].loc[ref]).sum()) for metric, _, ref in rules)
            for m in models if all(m in w.index for w in wide.values())}
    if not wins:
        return "No model was scored."
    best = max(wins, key=wins.get)
    misses = [f"{metric.upper()} at +{lead} min: {wide[metric].loc[best, lead]:.3f} vs {ref} "
              f"{wide[metric].loc[ref, lead]:.3f}"
              for metric, _, ref in rules for lead in wide[metric].columns
              if not better(wide[metric].loc[best, lead], wide[metric].loc[ref, lead])]
    head = f"Target: the best model {goal} at every lead. Best here: **{best}**; target "
    return head + ("**met**." if not misses else f"**NOT met** ({len(misses)} misses): " + "; ".join(misses) + ".")


def render(tag: str, parts: dict[str, tuple[pd.DataFrame, dict]]) -> str:
    """Markdown report of the radar and traffic parts (each with its own command, machine and load)."""
    md = [f"# Skill on real data ({tag.upper()}, small presets, steps fixed in advance)", ""]
    for task, (table, meta) in parts.items():
        md += [f"## {'Radar' if task == 'radar' else 'TaxiNYC'}", "",
               f"Machine: {meta['machine']}; 1-min load average before / after: {meta['load'][0]:.1f} / "
               f"{meta['load'][1]:.1f} (other jobs share the cores when it exceeds the threads).",
               f"Command: `{meta['command']}`; this part took {meta['total_s'] / 60:.1f} min "
               f"(scoring {meta['score_s']:.0f} s).", ""]
        models = [r["model"] for r in meta["trained"]]
        if task == "radar":
            md += [
                f"All frames in mm h-1, {COARSEN} x {COARSEN} block mean of the 1 km composites ({COARSEN} km "
                f"cells), cropped per event to the {CROP} x {CROP} window with most cells >= 1 mm/h over the "
                f"event (chosen from its observations, held-out events too); {T_IN} frames in -> {T_OUT} out "
                f"(30 -> 60 min); training on {PATCH} x {PATCH} patches without a validation split (all "
                f"training frames train), forecasts on blended {PATCH} x {PATCH} tiles of the crop.",
                "",
                "- Train: KNMI 2010-08-26 00:00-07:35 (92 frames, light rain) and MeteoSwiss 2015-05-15 "
                "15:45-19:00 (40 frames, AQC accumulations x 12 -> mm h-1), stacked on one nominal grid.",
                "- Held out: MeteoSwiss 2016-07-11 20:45-07-12 00:00 and FMI 2016-09-28 14:45-18:00 (FMI Z-R "
                f"223/1.53), every issue time in steps of {meta['case_stride']} with its 6 input frames and 12 "
                f"frames after it in the event: {meta['cases']} cases.",
                "- Baselines: Eulerian persistence; Lagrangian extrapolation (pysteps Lucas-Kanade on the last 3 "
                "frames, semi-Lagrangian advection). Each case is scored on the cells every method forecasts "
                "(`common_support`); sums are pooled over cases, then scored.",
                "", verdict(table, task, models), "",
                pivot(table, [("csi", 1.0, None), ("csi", 5.0, None), ("fss", 1.0, 16.0), ("mae", None, None)],
                      models + ["persistence", "lagrangian"])]
        else:
            md += [
                f"NYC14 (2014, hourly, in/out flows on 16 x 8 cells); train on everything before {meta['split']} "
                "(its last tenth is the validation split that picks `best.pt`), hold out the last 4 weeks; "
                f"4 in -> 4 out; every {meta['case_stride']}th held-out hour is an issue time: {meta['cases']} "
                "cases. Historical average = mean of the same weekday and hour over the 4 previous weeks. "
                "RMSE/MAE in vehicles per cell and hour (both flows).",
                "", verdict(table, task, models), "",
                pivot(table, [("rmse", None, None), ("mae", None, None)],
                      models + ["persistence", "historical_average"])]
        md += ["Training (steps fixed by `--steps` or the script's defaults, not by a timing probe):", "",
               "| model | steps | s/step | training s | final train loss | best epoch |", "|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['steps']} | {r['s_per_step']:.3f} | {r['train_s']:.0f} | "
               f"{r['final_train_loss']:.4f} | {r['best_epoch']} |" for r in meta["trained"]]
        md += ["", f"Full table: `skill-{tag}-{task}.csv` (columns method, lead_min, metric, threshold, scale_km, "
               "value).", ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "NOWCAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--only", choices=TASKS, nargs="+", default=list(TASKS), help="tasks to (re)run")
    parser.add_argument("--steps", type=int, help="training steps of every model (default: per model and task)")
    parser.add_argument("--traffic-batch", type=int, default=TRAFFIC_BATCH,
                        help="traffic batch size (16 x 8 frames: the tiny presets' 4 is mostly overhead)")
    parser.add_argument("--traffic-transform", default=TRAFFIC_TRANSFORM, help="traffic scaler (log1p, minmax)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case-stride", type=int, default=2, help="radar: every n-th held-out issue time")
    parser.add_argument("--traffic-stride", type=int, default=4, help="traffic: every n-th held-out hour")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    tag = "cpu" if args.device == "cpu" else "gpu"
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
               f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores") + \
        f"; {platform.platform()}; Python {platform.python_version()}; torch {torch.__version__} " \
        f"({torch.get_num_threads()} threads)"
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.only:
        t0, load = time.perf_counter(), os.getloadavg()[0]
        work = Path(tempfile.mkdtemp(prefix=f"nowcast-skill-{task}-"))
        try:
            log.info("%s: training %s", task, ", ".join(args.models))
            table, meta = (run_radar if task == "radar" else run_traffic)(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for r in meta["trained"]:
            del r["run"]
        meta.update(machine=machine, load=[load, os.getloadavg()[0]], total_s=time.perf_counter() - t0,
                    case_stride=args.case_stride if task == "radar" else args.traffic_stride,
                    command=f"python bench/skill.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip())
        table.to_csv(args.out / f"skill-{tag}-{task}.csv", index=False)
        (args.out / f"skill-{tag}-{task}.json").write_text(json.dumps(meta, indent=1))
    parts = {task: (pd.read_csv(args.out / f"skill-{tag}-{task}.csv"),
                    json.loads((args.out / f"skill-{tag}-{task}.json").read_text()))
             for task in TASKS if (args.out / f"skill-{tag}-{task}.json").exists()}
    text = render(tag, parts)
    (args.out / f"skill-{tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
