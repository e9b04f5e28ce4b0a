"""Ingest as a Prefect flow, reading files on a Dask cluster: ``python -m flows.ingest SOURCE PATH... --out A``.

Prefect tasks decode the files (mapped, a batch at a time, retried on
transient I/O errors) through prefect-dask's ``DaskTaskRunner``: a local
cluster by default, or an existing ``distributed`` scheduler when an address
is given, which is the route for archives that outgrow one machine. The
archive is written in time order in the flow itself by
:class:`nowcast.ingest.Ingestor`, the same bookkeeping as ``nowcast ingest``:
bad files are reported and skipped, re-runs are no-ops, interrupted runs
resume.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast import decoding
from nowcast.ingest import IngestReport, Ingestor
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

# errno values of I/O failures worth a retry (network file systems, busy devices).
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY,
                    errno.ECONNRESET, errno.ENETDOWN, errno.ENETUNREACH}


def _transient(task, task_run, state) -> bool:
    """Retry only when the reader failed on an I/O error that may go away."""
    return _is_transient(state.result(raise_on_failure=False))


def _is_transient(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return True
        error = error.__cause__
    return False


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def read_file(source: str, path: str | None, options: dict):
    """Decode one file into the data model (the reader's :class:`SourceError` on a bad file)."""
    result = decoding.read_file(source, path, options)
    if isinstance(result, BaseException) and _is_transient(result):
        raise result
    return result


def dask_task_runner(address: str | None = None, n_workers: int = 2):
    """prefect-dask runner: the scheduler at ``address``, or a local cluster of ``n_workers`` threads.

    The local cluster uses threads, not processes: each worker process would
    start its own temporary Prefect API without a server (slow).
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": False,
                                          "dashboard_address": ":0"})


@flow(name="nowcast-ingest", log_prints=False)
def ingest_flow(source: str, paths: list[str], archive: str, dask_address: str | None = None,
                n_workers: int = 2, batch_frames: int | None = None, options: dict | None = None) -> IngestReport:
    """Ingest ``paths`` of ``source`` into ``archive``, decoding on a Dask cluster."""
    logger = get_run_logger()
    job = Ingestor(source, archive, batch_frames=batch_frames, options=options)
    planned = job.plan(paths)
    logger.info("%d files to read, %d already archived, %d skipped while planning",
                len(planned), len(job.report.unchanged), len(job.report.skipped))
    position = 0
    with dask_task_runner(dask_address, n_workers) as runner:
        while position < len(planned):
            chunk = planned[position:position + max(n_workers, job.files_per_read())]
            futures = runner.map(read_file, {"source": unmapped(job.source), "options": unmapped(job.options),
                                             "path": [None if p is None else str(p) for p in chunk]})
            for path, future in zip(chunk, futures):
                job.add(path, future.result(raise_on_failure=False))
            position += len(chunk)
    report = job.finish()
    logger.info(report.summary())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--out", required=True, help="archive (Zarr folder)")
    parser.add_argument("--dask-address", default=None, help="existing distributed scheduler (tcp://host:port)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    parser.add_argument("--zr", default=None, help="convert reflectivity: 'source', 'marshall-palmer' or 'a,b'")
    parser.add_argument("--coarsen", type=int, default=None)
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("zr", args.zr), ("coarsen", args.coarsen)) if v is not None}
    report = ingest_flow(args.source, args.paths, str(Path(args.out)), dask_address=args.dask_address,
                         n_workers=args.workers, options=options)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
