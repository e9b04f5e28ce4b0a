"""``nowcast forecast`` end to end vs its compute: 512 x 512 cells, 12 leads (issue #14, target 2: ratio <= 1.3).

Builds a synthetic 512 x 512 archive on a real grid (:func:`nowcast.synthetic.synthetic_radar`: 1 km
around FMI's Vantaa radar) and a stlight-tiny checkpoint trained for a few steps on its default
64 x 64 patches (:func:`nowcast.training.train`), then, in one process, alternates ``--rounds`` rounds of

* end to end: :func:`nowcast.forecast.issue_nowcasts` (what ``nowcast forecast`` calls) with the
  checkpoint and the baselines: open the archive, plan from the checkpoint's metadata, load the
  weights, read the inputs, forecast, write CF-NetCDF and GeoTIFF products;
* compute: the same network over the domain (:func:`nowcast.forecast.predict`, on the forecast's
  tiles), the optical flow and advection of the Lagrangian baseline
  (:func:`nowcast.baselines.motion_field`, :func:`nowcast.baselines.extrapolate`) and persistence,
  on frames already in memory;

and writes the median of each and their ratio, with the median of the rounds' own ratios (each
pairs two calls made under about the same load of a shared machine) and CPU seconds. The first
end-to-end call of the process (imports of pysteps and the product writers, first load of the
weights) is reported apart, with planning from the checkpoint's metadata vs loading it, pysteps'
import in a fresh process that has the forecast stack imported, and one ``nowcast forecast``
command in a fresh process.

Run: ``python bench/forecast.py [--rounds 5] [--out bench/results/forecast-cpu.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE, LEADS, PRESET = 512, 12, "stlight-tiny"


def setup(work: Path) -> tuple[Path, Path]:
    """The archive and the run folder (made once per work folder)."""
    from nowcast import archive
    from nowcast.synthetic import synthetic_radar
    from nowcast.training import train

    store, run = work / "radar.zarr", work / "run"
    if not store.exists():
        archive.write(synthetic_radar(16, size=SIZE, seed=11), store)
    if not run.exists():
        train(store, PRESET, run, epochs=1, steps_per_epoch=3, batch_size=2, fractions=(1.0, 0.0, 0.0),
              progress=False)
    return store, run


def compute_inputs(store: Path, run: Path):
    """The network, its transform and tile, and the input frames in memory, as the forecast uses them."""
    from nowcast import archive
    from nowcast.forecast import load_model

    model, transform, meta = load_model(run)
    frames = archive.open_archive(store)["rainrate"].isel(time=slice(-model.t_in, None)).values
    patch = max(meta["data"]["patch"])
    return model, transform, (patch if patch < SIZE else None), frames


def compute(model, transform, tile, frames: np.ndarray) -> None:
    from nowcast import baselines
    from nowcast.forecast import predict

    predict(model, transform, frames[:, None], LEADS, tile=tile)
    velocity = baselines.motion_field(frames[-3:])
    baselines.extrapolate(frames[-1], velocity, LEADS)
    np.repeat(frames[-1:], LEADS, axis=0)


def end_to_end(store: Path, run: Path, out: Path) -> None:
    from nowcast.forecast import issue_nowcasts

    shutil.rmtree(out, ignore_errors=True)
    issues = issue_nowcasts(store, [run], out, n_leads=LEADS)
    assert issues[0].methods == [PRESET, "persistence", "lagrangian"], issues


def timed(call, *args) -> float:
    return clocked(call, *args)[0]


def clocked(call, *args) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds of ``call(*args)``."""
    start, cpu = time.perf_counter(), time.process_time()
    call(*args)
    return time.perf_counter() - start, time.process_time() - cpu


def fresh_process(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{platform.node()}, {cpu}, {os.cpu_count()} cores, {platform.machine()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def load_text(load: tuple[float, float, float]) -> str:
    return f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="reuse this folder's archive and run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    work.mkdir(parents=True, exist_ok=True)
    store, run = setup(work)
    load_before = os.getloadavg()
    first = timed(end_to_end, store, run, work / "products")
    from nowcast.checkpoint import read_metadata
    from nowcast.forecast import load_model

    plan = statistics.median(timed(read_metadata, run) for _ in range(5))
    weights = statistics.median(timed(load_model, run) for _ in range(5))
    inputs = compute_inputs(store, run)
    seconds: dict[str, list[tuple[float, float]]] = {"end to end": [], "compute": []}
    for r in range(args.rounds):
        for side in (["end to end", "compute"] if r % 2 == 0 else ["compute", "end to end"]):
            seconds[side].append(clocked(end_to_end, store, run, work / "products") if side == "end to end"
                                 else clocked(compute, *inputs))
    load_after = os.getloadavg()
    pysteps_import = float(fresh_process(
        "import time, nowcast.forecast, nowcast.products.netcdf, nowcast.products.geotiff, rasterio; "
        "t = time.perf_counter(); import pysteps; print(time.perf_counter() - t)"))
    cli = timed(fresh_process, "from nowcast.cli import main; import sys; sys.argv[1:] = "
                f"['forecast', {str(store)!r}, '-c', {str(run)!r}, '--out', {str(work / 'cli')!r}, '--leads', "
                f"'{LEADS}', '--overwrite']; main()")
    e2e, comp = (statistics.median(wall for wall, _ in seconds[k]) for k in ("end to end", "compute"))
    paired = statistics.median(a[0] / b[0] for a, b in zip(seconds["end to end"], seconds["compute"]))
    cpu = [statistics.median(c for _, c in seconds[k]) for k in ("end to end", "compute")]
    rows = [f"| {k} | {statistics.median(w for w, _ in v):.2f} | {', '.join(f'{w:.2f}' for w, _ in v)} | "
            f"{statistics.median(c for _, c in v):.2f} |" for k, v in seconds.items()]
    text = "\n".join([
        f"# `nowcast forecast` end to end vs compute: {SIZE} x {SIZE} cells, {LEADS} leads", "",
        f"Machine: {machine()}; load average before {load_text(load_before)}, after {load_text(load_after)} "
        "(the cores are shared with other engineers' runs).", "",
        f"Forecast: {PRESET} (trained 3 steps, tiled on its 64 x 64 training patch) plus persistence and "
        "Lagrangian extrapolation, CF-NetCDF and GeoTIFF products, synthetic archive (`nowcast.synthetic`).",
        f"{args.rounds} rounds in one process, alternating which side goes first; seconds.", "",
        "| side | median wall | rounds (wall) | median CPU |", "|---|---|---|---|", *rows, "",
        f"**Ratio end to end / compute: {e2e / comp:.2f}** (target <= 1.3); median of the rounds' own ratios "
        f"{paired:.2f}; CPU {cpu[0] / cpu[1]:.2f}.", "",
        "| also measured | seconds |", "|---|---|",
        f"| first end-to-end call of the process (pysteps and product writers imported, weights loaded) | "
        f"{first:.2f} |",
        f"| plan: read the checkpoint's metadata (sidecar), median of 5 | {plan:.4f} |",
        f"| load the weights (`load_model`: torch.load, digests, network), median of 5 | {weights:.4f} |",
        f"| `import pysteps` in a fresh process that already imported the forecast stack | {pysteps_import:.2f} |",
        f"| `nowcast forecast` command in a fresh process (Python start, imports, forecast, products) | {cli:.2f} |",
        "", "Run: `python bench/forecast.py --out bench/results/forecast-cpu.md`", ""])
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
