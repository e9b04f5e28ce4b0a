"""Skill on real data: tiny deep models versus persistence, Lagrangian extrapolation, historical average.

Radar (5-min sources, every frame in mm h-1, block-averaged 4 x 4 to 4 km and
cropped to the 64 x 64 cells (256 km) that hold the most rain of each event):

* train: KNMI 2010-08-26 00:00-07:35 (92 frames) + MeteoSwiss 2015-05-15 (40 frames);
* held out (never seen in training): MeteoSwiss 2016-07-11 and FMI 2016-09-28
  (40 frames each), every ``--case-stride``-th issue time whose 6 input frames
  and 12 following frames lie in the event; 6 frames in -> 12 out (30 -> 60 min).

TaxiNYC 2014 (hourly, 2 x 16 x 8 in/out flows): train on all but the last 4
weeks, score on the last 4 weeks (every ``--traffic-stride``-th hour), 4 in -> 4 out.

Each model trains for a fixed wall-clock budget: a three-step probe run measures
seconds per step on this machine, then the real run gets as many steps as fit.
All methods of a radar case are scored on the same cells
(:func:`nowcast.verification.common_support`). Writes ``bench/results/skill-<device>.md``
and ``.csv`` and prints the tables.

    python bench/skill.py --budget-min 3 --device cpu
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
import xarray as xr

from nowcast import archive
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


def train_for(data: xr.Dataset, preset: str, out: Path, budget_s: float, device: str, **options) -> dict:
    """Train ``preset`` for about ``budget_s`` seconds (steps sized by a three-step probe)."""
    common = dict(device=device, progress=False, patience=None, fractions=(1.0, 0.0, 0.0), **options)
    start = time.perf_counter()
    probe = train(data, preset, out.with_name(out.name + "-probe"), epochs=1, steps_per_epoch=3, **common)
    per_step = probe.history[-1]["seconds"] / 3  # the epoch's own time: set-up is not a step
    spent = time.perf_counter() - start
    set_up = spent - probe.history[-1]["seconds"]  # paid again by the real run
    steps = max(2, int((budget_s - spent - set_up) / per_step))
    epochs = min(4, steps)
    result = train(data, preset, out, epochs=epochs, steps_per_epoch=max(1, steps // epochs), **common)
    seconds = time.perf_counter() - start
    return {"model": preset, "steps": epochs * max(1, steps // epochs), "s_per_step": per_step,
            "train_s": seconds, "final_train_loss": result.history[-1]["train_loss"], "run": result.run_dir}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NOWCAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--budget-min", type=float, default=3.0, help="radar training wall-clock per model")
    parser.add_argument("--traffic-budget-min", type=float, default=1.0, help="traffic training per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case-stride", type=int, default=2, help="radar: every n-th held-out issue time")
    parser.add_argument("--traffic-stride", type=int, default=4, help="traffic: every n-th held-out hour")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="nowcast-skill-"))
    try:
        events = {name: rain_event(name, args.data, work) for name in TRAIN_EVENTS + TEST_EVENTS}
        ingest_s = time.perf_counter() - t0
        rain_train = stacked([events[n] for n in TRAIN_EVENTS])
        runs, trained = [], []
        for preset in args.models:
            log.info("radar: training %s for %.1f min", preset, args.budget_min)
            info = train_for(rain_train, preset, work / "radar" / preset, args.budget_min * 60, args.device,
                             t_in=T_IN, t_out=T_OUT, patch=PATCH)
            trained.append({"task": "radar", **info})
            runs.append(info["run"])
        t1 = time.perf_counter()
        radar, radar_cases = score_cases({n: events[n] for n in TEST_EVENTS}, runs, T_OUT, T_IN,
                                         args.case_stride, args.device, RAIN_THRESHOLDS, FSS_KM)
        radar_score_s = time.perf_counter() - t1

        taxi_store = work / "taxinyc.zarr"
        ingest("taxibj", [args.data / "taxinyc" / "NYC14_Taxi_M16x8_T60_InOut.h5"], taxi_store)
        taxi = archive.open_archive(taxi_store).load()
        split = pd.Timestamp(taxi["time"].values[-1]) - HOLDOUT
        taxi_train = taxi.sel(time=slice(None, split))
        taxi_runs = []
        for preset in args.models:
            log.info("traffic: training %s for %.1f min", preset, args.traffic_budget_min)
            info = train_for(taxi_train, preset, work / "traffic" / preset, args.traffic_budget_min * 60,
                             args.device, t_in=TRAFFIC_T, t_out=TRAFFIC_T)
            trained.append({"task": "traffic", **info})
            taxi_runs.append(info["run"])
        t2 = time.perf_counter()
        held = taxi.sel(time=slice(split - HOLDOUT - pd.Timedelta(hours=TRAFFIC_T), None))
        traffic, traffic_cases = score_cases({"taxinyc": held}, taxi_runs, TRAFFIC_T, TRAFFIC_T,
                                             args.traffic_stride, args.device, (), (),
                                             history=HOLDOUT + pd.Timedelta(hours=TRAFFIC_T))
        traffic_score_s = time.perf_counter() - t2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - t0

    radar["task"], traffic["task"] = "radar", "traffic"
    table = pd.concat([radar, traffic], ignore_index=True)
    tag = "cpu" if args.device == "cpu" else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"skill-{tag}.csv", index=False)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    rain_methods = list(args.models) + ["persistence", "lagrangian"]
    taxi_methods = list(args.models) + ["persistence", "historical_average"]
    csi30 = radar[(radar.metric == "csi") & np.isclose(radar.threshold, 1.0) & (radar.lead_min == 30)]
    csi30 = csi30.set_index("method")["value"]
    deep = csi30.reindex(args.models)
    best = deep.idxmax() if deep.notna().any() else None
    verdict = (f"Best deep model at +30 min, CSI >= 1 mm/h: **{best}** {deep[best]:.3f} versus Lagrangian "
               f"{csi30.get('lagrangian', np.nan):.3f}: the target is "
               f"**{'met' if deep[best] > csi30.get('lagrangian', np.nan) else 'NOT met'}**."
               if best else "No deep model produced a CSI at +30 min.")
    train_rows = ["| task | model | steps | s/step | training s | final train loss |", "|---|---|---|---|---|---|"]
    train_rows += [f"| {r['task']} | {r['model']} | {r['steps']} | {r['s_per_step']:.2f} | {r['train_s']:.0f} | "
                   f"{r['final_train_loss']:.4f} |" for r in trained]
    md = [
        f"# Skill on real data ({tag.upper()}, small presets, short budget)",
        "",
        f"Machine: {device_name}; {platform.platform()}; Python {platform.python_version()}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f} (above the core count means other jobs slowed training).",
        f"Command: `python bench/skill.py {' '.join(sys.argv[1:])}`; total {total_s / 60:.1f} min "
        f"(ingest {ingest_s:.0f} s, radar scoring {radar_score_s:.0f} s, traffic scoring {traffic_score_s:.0f} s).",
        "",
        "**These are CPU smoke-scale numbers, not the models' skill**: `*-tiny` presets "
        f"(tens of thousands of parameters), {args.budget_min:g} min of training per radar model and "
        f"{args.traffic_budget_min:g} min per traffic model, no validation split (all training frames train; "
        "the held-out events are never seen), paper optimiser and loss of each family.",
        "",
        "## Radar",
        "",
        f"All frames in mm h-1, {COARSEN} x {COARSEN} block mean of the 1 km composites ({COARSEN} km cells), cropped "
        f"per event to the {CROP} x {CROP} window with most cells >= 1 mm/h over the event (chosen from its "
        f"observations, held-out events too); {T_IN} frames in -> {T_OUT} out "
        f"(30 -> 60 min); training on {PATCH} x {PATCH} patches, forecasts on blended {PATCH} x {PATCH} tiles "
        f"of the {CROP} x {CROP} crop (the training patch size, nowcast.forecast's default).",
        "",
        "- Train: KNMI 2010-08-26 00:00-07:35 (92 frames, light rain) and MeteoSwiss 2015-05-15 15:45-19:00 "
        "(40 frames, AQC accumulations x 12 -> mm h-1), stacked on one nominal grid.",
        "- Held out: MeteoSwiss 2016-07-11 20:45-07-12 00:00 and FMI 2016-09-28 14:45-18:00 (FMI Z-R "
        f"223/1.53), one issue time in {args.case_stride} with its 6 input frames (ending at it) and 12 "
        f"frames after it in the event: "
        f"{radar_cases} cases.",
        "- Baselines: Eulerian persistence; Lagrangian extrapolation (pysteps Lucas-Kanade on the last 3 "
        "frames, semi-Lagrangian advection). Each case is scored on the cells every method forecasts "
        "(`common_support`); sums are pooled over cases, then scored.",
        "",
        verdict,
        "",
        pivot(radar, [("csi", 1.0, None), ("csi", 5.0, None), ("fss", 1.0, 16.0), ("mae", None, None)],
              rain_methods),
        "## TaxiNYC",
        "",
        f"NYC14 (2014, hourly, in/out flows on 16 x 8 cells); train on everything before {split:%Y-%m-%d %H:%M}, "
        f"hold out the last 4 weeks; 4 in -> 4 out; one hour in {args.traffic_stride} of the held-out weeks "
        f"is an issue time: {traffic_cases} cases. Historical average = mean of the same weekday and hour "
        "over the 4 previous weeks. RMSE/MAE in vehicles per cell and hour (both flows).",
        "",
        pivot(traffic, [("rmse", None, None), ("mae", None, None)], taxi_methods),
        "## Training",
        "",
        *train_rows,
        "",
        f"Full table: `skill-{tag}.csv` (columns task, method, lead_min, metric, threshold, scale_km, value).",
        "",
    ]
    text = "\n".join(md)
    (args.out / f"skill-{tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
