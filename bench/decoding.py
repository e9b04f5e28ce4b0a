"""BoM ingest throughput by route: 1 or 2 threads, 2 worker processes, a local Dask cluster of 1 or 2 workers.

All 61 Rainfields files of the shared data are ingested into a fresh Zarr
archive per run, in one process, the routes alternating (the order rotates
each round), median of ``--rounds`` rounds. The process route includes
starting its spawned workers (once per ingest), which is what a user pays.
The cluster routes (``nowcast.ingest.ingest(client=...)``: workers decode and
write their frames' slots, this process commits) run on a local cluster of
process workers started once before the rounds; its start-up is printed apart.
Before the NetCDF lock (commit c74f3e0), 2 threads crashed this ingest 3 of 3
times; run this script from an older checkout with ``--routes threads-1`` to
compare.

Run: ``python bench/decoding.py [--rounds 3] [--out bench/results/decoding-cpu.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SHARED_DATA", ROOT.parent / "shared" / "data"))
ROUTES = {"threads-1": {"workers": 1}, "threads-2": {"workers": 2},
          "processes-2": {"workers": 2, "processes": True}, "cluster-1": {}, "cluster-2": {}}
CLIENTS: dict = {}


def run(route: str, files: list[Path], tmp: Path) -> float:
    from nowcast.ingest import ingest

    store = tmp / f"{route}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    options = dict(ROUTES[route], client=CLIENTS[route]) if route in CLIENTS else ROUTES[route]
    report = ingest("bom", files, store, **options)
    elapsed = time.perf_counter() - start
    if not report.ok or report.frames_added != len(files):
        raise SystemExit(f"{route}: {report.summary()}")
    return len(files) / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    files = sorted((DATA / "radar" / "bom").rglob("*.nc"))
    rates: dict[str, list[float]] = {r: [] for r in args.routes}
    startup = {}
    for route in [r for r in args.routes if r.startswith("cluster-")]:
        from distributed import Client, LocalCluster

        start = time.perf_counter()
        cluster = LocalCluster(n_workers=int(route[-1]), threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        CLIENTS[route] = Client(cluster)
        startup[route] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        run(args.routes[0], files[:3], Path(tmp))  # warm imports and file cache
        for i in range(args.rounds):
            order = args.routes[i % len(args.routes):] + args.routes[:i % len(args.routes)]
            for route in order:
                rates[route].append(run(route, files, Path(tmp)))
    load = os.getloadavg()
    lines = [f"# BoM ingest by decoding route ({len(files)} Rainfields files, {args.rounds} rounds, median)", "",
             f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
             f"load average before the runs ended {load[0]:.2f} (1 min).", "",
             f"| route | frames/s (median) | all rounds | vs {args.routes[0]} |", "|---|---|---|---|"]
    base = statistics.median(rates[args.routes[0]])
    for route, values in rates.items():
        med = statistics.median(values)
        lines.append(f"| {route} | {med:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {med / base:.2f}x |")
    lines += [f"\n{route}: cluster start-up {seconds:.1f} s (not in the rates)" for route, seconds in startup.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
