"""Big grids: nowcasts on the full OPERA composite (2200 x 1900 cells at 2 km; issue #14, target 3).

Ingests the 24 real OPERA ODIM_H5 composites of ``shared/data/radar/OPERA`` into an archive once,
then measures, each in a fresh process (wall time, CPU time and the process's peak resident
memory, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, imports included):

* ``baselines``: persistence and Lagrangian extrapolation, 12 leads, at the last frame, in memory
  (target: at most 60 s and 1.5 GB on 2 cores);
* ``baselines+products``: the same through :func:`nowcast.forecast.issue_nowcasts` (what
  ``nowcast forecast`` calls without a checkpoint), writing CF-NetCDF and GeoTIFF products;
* ``model+products``: an initialised stlight-tiny (saved through :mod:`nowcast.checkpoint`, trained
  on 64 x 64 patches as far as the forecast knows, so it tiles the domain) through ``issue_nowcasts``
  without baselines, on the full grid and on its northern half, to show how the peak grows with the
  domain.

"work s" times the measured call only; "process s" the whole fresh process (Python start, imports).

The model rows run twice: with glibc's default allocator, whose mmap threshold rises to the size of the
largest array freed (up to 32 MiB), so later fields of a lead's size (16.7 MB here) come from the heap and
its freed pages stay resident; and with the threshold fixed at 4 MiB (``GLIBC_TUNABLES``, :data:`FIXED_MMAP`),
where what the process holds shows without that retention.

Run: ``python bench/big_grid.py [--model-leads 12] [--out bench/results/big-grid-cpu.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
LEADS = 12
FIXED_MMAP = "glibc.malloc.mmap_threshold=4194304"


def prepare(work: Path) -> None:
    """The OPERA archive, its northern half, and an initialised checkpoint (made once per work folder)."""
    import torch

    from nowcast import archive, models
    from nowcast.checkpoint import save_checkpoint
    from nowcast.ingest import ingest
    from nowcast.transforms import DBR

    if not (work / "opera.zarr").exists():
        ingest("odim", sorted((DATA / "radar" / "OPERA" / "20180824").glob("*.hdf")), work / "opera.zarr")
    if not (work / "opera-half.zarr").exists():
        full = archive.open_archive(work / "opera.zarr")
        archive.write(full.isel(y=slice(0, full.sizes["y"] // 2)).load(), work / "opera-half.zarr")
    if not (work / "run" / "best.pt").exists():
        torch.manual_seed(0)
        model = models.build("stlight-tiny")
        save_checkpoint({"epoch": 0, "step": 0,
                         "model": {"name": "stlight-tiny", "config": model.config, "state": model.state_dict()},
                         "transform": DBR().to_dict(), "config": {},
                         "data": {"variable": "rainrate", "time_step": "PT15M", "channels": 1, "patch": [64, 64]}},
                        work / "run" / "best.pt")


def child(mode: str, work: Path, leads: int) -> dict:
    """Run one measurement in this process; the peak memory covers the whole process."""
    start_process = time.perf_counter()
    from nowcast import archive, baselines
    from nowcast.forecast import issue_nowcasts

    if mode == "baselines":
        import pysteps  # noqa: F401  (imported before the clock starts, as the other modes' imports)

    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "baselines":
        obs = archive.open_archive(work / "opera.zarr")
        forecasts = [baselines.persistence(obs, leads), baselines.lagrangian_extrapolation(obs, leads)]
        assert all(fc.sizes["time"] == leads for fc in forecasts)
    elif mode == "baselines+products":
        issues = issue_nowcasts(work / "opera.zarr", [], work / "products", n_leads=leads, overwrite=True)
        assert issues[0].methods == ["persistence", "lagrangian"], issues
    else:
        store = work / ("opera-half.zarr" if mode.endswith("half") else "opera.zarr")
        issues = issue_nowcasts(store, [work / "run"], work / "products", n_leads=leads, include_baselines=False,
                                overwrite=True)
        assert issues[0].methods == ["stlight-tiny"], issues
    return {"work_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "process_s": time.perf_counter() - start_process,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(mode: str, work: Path, leads: int, env: dict | None = None) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), "--leads", str(leads)],
                          check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="reuse this folder's archives and checkpoint")
    parser.add_argument("--model-leads", type=int, default=LEADS)
    parser.add_argument("--skip-model", action="store_true", help="measure the baselines only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--leads", type=int, default=LEADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.work, args.leads)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-big-grid-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    runs = [("baselines", LEADS, None), ("baselines+products", LEADS, None)]
    if not args.skip_model:
        runs += [(mode, args.model_leads, env) for env in (None, {"GLIBC_TUNABLES": FIXED_MMAP})
                 for mode in ("model+products", "model+products half")]
    load_before = os.getloadavg()
    rows = []
    for mode, leads, env in runs:
        r = measure(mode, work, leads, env)
        print(mode, env, r, flush=True)
        domain = "1100 x 1900" if mode.endswith("half") else "2200 x 1900"
        allocator = "mmap threshold 4 MiB" if env else "default"
        rows.append(f"| {mode} | {domain} | {leads} | {allocator} | {r['work_s']:.1f} | {r['cpu_s']:.1f} | "
                    f"{r['process_s']:.1f} | {r['peak_mb']:.0f} |")
    load_after = os.getloadavg()
    loads = " / ".join(f"{x:.2f}" for x in load_before), " / ".join(f"{x:.2f}" for x in load_after)
    text = "\n".join([
        "# Big grid: nowcasts on the full OPERA composite (2200 x 1900 cells, 2 km, 15 min)", "",
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; load average (1 / 5 / 15 min) before {loads[0]}, after {loads[1]} "
        "(the cores are shared with other engineers' runs). Real data: the 24 OPERA ODIM_H5 composites of "
        "2018-08-24 (`shared/data/radar/OPERA`), issued at the last frame. Each row is a fresh process.", "",
        "| run | cells (rows x columns) | leads | glibc malloc | work s | CPU s | process s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Targets: baselines at most 60 s and 1.5 GB on 2 cores; a model forecast's peak not growing with "
        "the domain.", "", "Run: `python bench/big_grid.py --out bench/results/big-grid-cpu.md`", ""])
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
