"""Forecast product sizes and write times: CF-NetCDF vs the same forecast's COGs, and vs pysteps' exporter.

A 12-lead Lagrangian-extrapolation nowcast of the real FMI composite
(1226 x 760 at 1 km, rain rate) is written as one CF-NetCDF file
(:func:`nowcast.products.write_cf_netcdf`), as one COG per lead
(:func:`nowcast.products.write_geotiffs`) and with pysteps' NetCDF exporter
(``initialize_forecast_exporter_netcdf``), in one process, alternating, median
of ``--rounds`` rounds. Target: the NetCDF at most 1.5x the COGs in bytes.

Run: ``python bench/products.py [--rounds 3] [--out bench/results/products-cpu.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NOWCAST_SHARED_DATA", ROOT.parent / "shared" / "data"))


def nowcast_inputs():
    from nowcast.baselines import lagrangian_extrapolation
    from nowcast.ingest import ingest
    from nowcast.archive import open_archive

    files = sorted((DATA / "radar" / "fmi" / "pgm" / "20160928").glob("*.pgm.gz"))[20:24]
    tmp = Path(tempfile.mkdtemp())
    ingest("fmi", files, tmp / "fmi.zarr", zr="source")
    obs = open_archive(tmp / "fmi.zarr").load()
    return obs, lagrangian_extrapolation(obs, n_leads=12), files[-1]


def write_pysteps(forecast: np.ndarray, meta: dict, folder: Path, start) -> Path:
    from pysteps.io import exporters

    exporter = exporters.initialize_forecast_exporter_netcdf(
        str(folder), "pysteps", start, 5, forecast.shape[0], forecast.shape[1:], meta, n_ens_members=1)
    exporters.export_forecast_dataset(forecast, exporter)
    exporters.close_forecast_files(exporter)
    return folder / "pysteps.nc"


def size(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def main(argv: list[str] | None = None) -> None:
    from pysteps.io import import_fmi_pgm
    from pysteps.utils import conversion

    from nowcast.products import write_cf_netcdf, write_geotiffs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    obs, fc, last = nowcast_inputs()
    _, _, meta = import_fmi_pgm(str(last), gzipped=True)
    _, meta = conversion.to_rainrate(np.zeros((1, 1)), meta)
    values = fc["rainrate"].values.astype("f8")
    start = fc["forecast_reference_time"].values.astype("datetime64[s]").item()
    seconds = {"netcdf": [], "cogs": [], "pysteps": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            sides = ["netcdf", "cogs", "pysteps"]
            for side in sides[i % 3:] + sides[:i % 3]:
                folder = Path(tmp) / f"{side}{i}"
                folder.mkdir()
                t = time.perf_counter()
                if side == "netcdf":
                    written = [write_cf_netcdf(fc, folder / "lagrangian.nc")]
                elif side == "cogs":
                    written = write_geotiffs(fc, folder)
                else:
                    written = [write_pysteps(values, meta, folder, start)]
                seconds[side].append(time.perf_counter() - t)
                sizes[side] = size(written)
    load = os.getloadavg()[0]
    ny, nx = fc.sizes["y"], fc.sizes["x"]
    lines = [f"# Forecast products: 12-lead Lagrangian nowcast of the FMI composite ({nx} x {ny})", "",
             f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}; load average "
             f"{load:.2f} (1 min) at the end; {args.rounds} rounds alternating, median.", "",
             "| product | bytes | vs COGs | write s (median) | rounds |", "|---|---|---|---|---|"]
    for side, label in (("netcdf", "nowcast CF-NetCDF (lat/lon float32, zlib)"), ("cogs", "nowcast COGs (12 files)"),
                        ("pysteps", "pysteps NetCDF exporter (no lat/lon)")):
        lines.append(f"| {label} | {sizes[side]:,} | {sizes[side] / sizes['cogs']:.2f}x | "
                     f"{statistics.median(seconds[side]):.2f} | {', '.join(f'{s:.2f}' for s in seconds[side])} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
