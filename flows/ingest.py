"""Ingest as a Prefect flow on a Dask cluster: ``python -m flows.ingest SOURCE PATH... --out A``.

The flow only schedules, logs and reports: the work is
:func:`nowcast.ingest.ingest` with a ``distributed`` client, the same read
path as ``nowcast ingest``. Dask workers decode the files and write their
frames into the archive's slots themselves (groups of files that share no
Zarr chunk), returning only which times they wrote; the flow's process holds
the archive's lock and commits. Bad files are reported and skipped, re-runs
are no-ops, interrupted runs resume, and transient I/O errors are retried by
the library's reader.

The cluster is an existing ``distributed`` scheduler (``--dask-address``), or
a local cluster of worker processes bound to 127.0.0.1. Worker-side code is
plain library code: it never calls the Prefect API, so process workers start
no temporary Prefect server of their own (Prefect tasks on Dask process
workers would each need one without ``PREFECT_API_URL``).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast.ingest import IngestReport, ingest
from prefect import flow, get_run_logger
from prefect.states import Completed


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int = 2):
    """A ``distributed.Client`` of the scheduler at ``address``, or of a local cluster of ``n_workers``
    one-thread worker processes listening on 127.0.0.1 only (dashboard included)."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        yield client


@flow(name="nowcast-ingest", log_prints=False)
def ingest_flow(source: str, paths: list[str], archive: str, dask_address: str | None = None,
                n_workers: int = 2, batch_frames: int | None = None, options: dict | None = None):
    """Ingest ``paths`` of ``source`` into ``archive`` on a Dask cluster; the final state's message
    says how many files were skipped and the result is the :class:`IngestReport`."""
    logger = get_run_logger()
    with dask_client(dask_address, n_workers) as client:
        report = ingest(source, paths, archive, batch_frames=batch_frames, client=client, **(options or {}))
    logger.info(report.summary())
    message = (f"{report.frames_added} frames added from {len(report.ingested)} files, "
               f"{len(report.unchanged)} already archived, {len(report.skipped)} skipped")
    if report.skipped:
        logger.warning("skipped %d file(s): %s", len(report.skipped),
                       "; ".join(f"{path}: {reason}" for path, reason in report.skipped))
    return Completed(message=message, data=report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--out", required=True, help="archive (Zarr folder)")
    parser.add_argument("--dask-address", default=None, help="existing distributed scheduler (tcp://host:port)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    parser.add_argument("--zr", default=None, help="convert reflectivity: 'source', 'marshall-palmer' or 'a,b'")
    parser.add_argument("--coarsen", type=int, default=None)
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("zr", args.zr), ("coarsen", args.coarsen)) if v is not None}
    report: IngestReport = ingest_flow(args.source, args.paths, str(Path(args.out)), dask_address=args.dask_address,
                                       n_workers=args.workers, options=options)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
