"""Ingest throughput and peak memory per source, against pysteps' own importers on the same files.

For every radar source, N real files are decoded by nowcast's reader and by
pysteps' importer (same output grid: MRMS both at 0.01 deg and both 4 x 4
block-averaged), each in a fresh subprocess so that peak memory (the rise of
ru_maxrss over the process after its imports) belongs to that reader alone.
The first file warms up lazy imports and caches; throughput is over the
others. Then the whole ingest into a Zarr archive is timed the same way, and
the full MRMS sequence (36 frames of 7000 x 3500 float32) is ingested at
native resolution to measure the archive path's peak memory.

Run: ``python bench/ingest.py [--files 12] [--out bench/results/ingest-cpu.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SHARED_DATA", ROOT.parent / "shared" / "data"))

# source -> (folder, nowcast options, pysteps importer and options or None, note)
CASES = {
    "fmi": ("radar/fmi/pgm/20160928", {}, ("import_fmi_pgm", {"gzipped": True}), ""),
    "fmi-geotiff": ("radar/fmi/geotiff/20160928", {}, None, "250 m, 4963 x 7316; pysteps' importer needs GDAL"),
    "fmi-geotiff/4": ("radar/fmi/geotiff/20160928", {"coarsen": 4}, None, "4 x 4 block mean to 1 km"),
    "mch": ("radar/mch/20150515", {}, ("import_mch_gif", {"product": "AQC", "unit": "mm", "accutime": 5}), ""),
    "knmi": ("radar/KNMI/2010/08", {}, ("import_knmi_hdf5", {"qty": "ACRR", "accutime": 5}), ""),
    "bom": ("radar/bom/prcp-cscn/2/2018/06/16", {}, ("import_bom_rf3", {}), ""),
    "odim": ("radar/OPERA/20180824", {}, ("import_odim_hdf5", {"qty": "RATE"}), ""),
    "mrms": ("radar/mrms/2019/06/10", {}, ("import_mrms_grib", {"window_size": 1}), "0.01 deg, 7000 x 3500"),
    "mrms/4": ("radar/mrms/2019/06/10", {"coarsen": 4}, ("import_mrms_grib", {"window_size": 4}),
               "4 x 4 block mean, 1750 x 875"),
    "taxibj": ("taxinyc", {}, None, "TaxiNYC, one file = one year; pysteps reads no traffic"),
}


def files_of(source: str, folder: str, limit: int) -> list[str]:
    from nowcast.sources import get_source

    found = sorted(p for p in (DATA / folder).iterdir() if get_source(source.split("/")[0]).matches(p))
    return [str(p) for p in found[:limit]]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict) -> dict:
    """Run one measurement in this (fresh) process; return frames, seconds and peak memory."""
    import nowcast  # noqa: F401  (offline defaults)
    import pysteps.io.importers as importers

    from nowcast.ingest import ingest
    from nowcast.sources import get_reader

    source, files, kind = spec["source"].split("/")[0], spec["files"], spec["kind"]
    get_reader(source)  # import the reader's module before the baseline
    baseline = peak_mib()
    if kind == "ingest":
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = ingest(source, files, Path(tmp) / "a.zarr", **spec["options"])
            seconds = time.perf_counter() - start
        return {"frames": report.frames_added, "seconds": seconds, "peak": peak_mib() - baseline}
    if kind == "nowcast":
        reader = get_reader(source)

        def read(path):
            return reader(path, **spec["options"])
    else:
        name, options = spec["pysteps"]
        importer = getattr(importers, name)

        def read(path):
            return importer(path, **options)
    read(files[0])  # warm-up: lazy imports, cached grid coordinates
    frames = 0
    start = time.perf_counter()
    for path in files[1:]:
        out = read(path)
        frames += out.sizes["time"] if kind == "nowcast" else 1
        del out
    return {"frames": frames, "seconds": time.perf_counter() - start, "peak": peak_mib() - baseline}


def measure(**spec) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['source']} {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rate(result: dict) -> float:
    return result["frames"] / result["seconds"] if result["seconds"] > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12, help="files per source (the first is a warm-up)")
    parser.add_argument("--sources", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    lines = [f"# Ingest benchmark ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})",
             "", f"Data: `{DATA}`; {args.files} files per source (first one a warm-up); "
             "peak = rise of the process's max RSS over its imports.", "",
             "| source | files | nowcast frames/s | pysteps frames/s | speed ratio | nowcast peak MiB | "
             "pysteps peak MiB | memory ratio | ingest frames/s | ingest peak MiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for source in args.sources.split(","):
        folder, options, pysteps, note = CASES[source]
        files = files_of(source, folder, args.files)
        ours = measure(source=source, files=files, kind="nowcast", options=options)
        ingest = measure(source=source, files=files, kind="ingest", options=options)
        if pysteps:
            theirs = measure(source=source, files=files, kind="pysteps", pysteps=pysteps, options={})
            cells = (f"{rate(theirs):.2f}", f"{rate(ours) / rate(theirs):.2f}x", f"{theirs['peak']:.0f}",
                     f"{ours['peak'] / max(theirs['peak'], 1):.2f}")
        else:
            cells = ("n/a", "n/a", "n/a", "n/a")
        row = (f"| {source} | {len(files)} | {rate(ours):.2f} | {cells[0]} | {cells[1]} | {ours['peak']:.0f} | "
               f"{cells[2]} | {cells[3]} | {rate(ingest):.2f} | {ingest['peak']:.0f} | {note} |")
        print(row, flush=True)
        lines.append(row)

    mrms = files_of("mrms", CASES["mrms"][0], 10_000)
    full = measure(source="mrms", files=mrms, kind="ingest", options={})
    frame_mib = 7000 * 3500 * 4 / 2**20
    summary = (f"\nMRMS sequence ingested at native resolution: {full['frames']} frames of 7000 x 3500 "
               f"({frame_mib:.0f} MiB float32 each, {full['frames'] * frame_mib / 1024:.1f} GiB in all) in "
               f"{full['seconds']:.0f} s ({rate(full):.2f} frames/s); peak memory {full['peak']:.0f} MiB "
               f"= {full['peak'] / frame_mib:.1f} frames.")
    print(summary)
    lines.append(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
