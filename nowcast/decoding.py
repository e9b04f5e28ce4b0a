"""Decode the files of an ingest batch at once: in threads, or in worker processes a native crash cannot take down.

:func:`read_file` is the one read path (a file → data-model dataset, or the
exception that says why not); :class:`ThreadDecoder` and
:class:`ProcessDecoder` map it over a batch of files and return the results
in order.

Threads are the default: cheap to start and the decoders release the GIL
(zlib, HDF5, GDAL), with netCDF calls serialised by
:data:`nowcast.netcdf_lock.NETCDF_LOCK`. Worker processes are the route for
untrusted files or libraries: a decoder that segfaults or aborts kills only
its worker, the file it was reading is reported by name as a bad file, and
the batch goes on in a fresh pool.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

import xarray as xr

from nowcast.schema import SchemaError
from nowcast.sources import Source, SourceError, get_source

log = logging.getLogger(__name__)

# errno values of I/O failures worth a retry (network file systems, busy devices).
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY,
                    errno.ECONNRESET, errno.ENETDOWN, errno.ENETUNREACH}
RETRIES, RETRY_DELAY_S = 2, 1.0


def is_transient(error: BaseException | None) -> bool:
    """True when ``error`` (or an error it was raised from) is an I/O failure that may go away."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return True
        error = error.__cause__
    return False


def read_file(source: str | Source, path: str | os.PathLike | None, options: dict, strict: bool = False
              ) -> xr.Dataset | BaseException:
    """Decode one file of ``source`` (a name or a :class:`Source`; path None for a generated source).

    Returns the reader's exception instead of raising it, so a bad file is a
    result like any other; with ``strict`` an unexpected reader error (a bug,
    not a bad file) is raised. Transient I/O errors are retried twice, a second apart.
    """
    reader = source if isinstance(source, Source) else get_source(source)
    for attempt in range(RETRIES + 1):
        result = _read_once(reader, path, options, strict)
        if not (isinstance(result, BaseException) and is_transient(result)) or attempt == RETRIES:
            return result
        log.warning("transient error reading %s (%s); retrying", path, result)
        time.sleep(RETRY_DELAY_S)
    return result


def _read_once(reader: Source, path, options: dict, strict: bool) -> xr.Dataset | BaseException:
    try:
        return reader.open(path, **options)
    except (SourceError, SchemaError, OSError) as err:
        return err
    except Exception as err:  # noqa: BLE001 - a reader bug on one file must not stop the archive
        if strict:
            raise
        log.exception("reader failed on %s", path)
        return err


class ThreadDecoder:
    """Decode a batch in a pool of ``workers`` threads."""

    def __init__(self, workers: int = 2):
        self.workers = max(1, int(workers))

    def map(self, source: str | Source, paths: Sequence[Path | None], options: dict, strict: bool = False) -> list:
        """:func:`read_file` of every path, in order."""
        if len(paths) == 1 or self.workers == 1:
            return [read_file(source, p, options, strict) for p in paths]
        with ThreadPoolExecutor(min(self.workers, len(paths))) as pool:
            return list(pool.map(lambda p: read_file(source, p, options, strict), paths))

    def close(self) -> None:
        """Nothing to release (threads end with each batch)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecoderCrash(SourceError):
    """The worker process decoding a file died (a native crash such as SIGSEGV, or out of memory)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "its decoder process died while reading it (a crash in a native library, "
                               "such as a segmentation fault, or out of memory); file skipped")

    def __reduce__(self):
        return (type(self), (self.path,))


class ProcessDecoder:
    """Decode a batch in ``workers`` spawned worker processes, surviving workers that die.

    When a worker dies, every file of the batch still in flight fails with
    ``BrokenProcessPool``; those files are then decoded one at a time in a
    fresh one-worker pool, so the file that kills its decoder again is the one
    reported (:class:`DecoderCrash`) and every other file is kept. Spawned,
    not forked: the parent may hold threads and HDF5 state that a fork would
    copy half-way.
    """

    def __init__(self, workers: int = 2):
        self.workers = max(1, int(workers))
        self._context = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=_worker_init)

    def map(self, source: str | Source, paths: Sequence[Path | None], options: dict, strict: bool = False) -> list:
        """:func:`read_file` of every path, in order, each in a worker process."""
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
        futures = [self._pool.submit(read_file, source, p, options, strict) for p in paths]
        results: list = []
        crashed: list[int] = []
        for i, future in enumerate(futures):
            outcome = _outcome(future)
            if outcome is _CRASHED:
                crashed.append(i)
            results.append(outcome)
        if crashed:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            log.warning("a decoder process died; re-reading %d file(s) one at a time to find the cause",
                        len(crashed))
            for i in crashed:
                results[i] = self._isolate(source, paths[i], options, strict)
        return results

    def _isolate(self, source: str | Source, path: Path | None, options: dict, strict: bool):
        """Decode ``path`` alone in its own pool; a crash now is this file's doing."""
        with self._new_pool(1) as pool:
            outcome = _outcome(pool.submit(read_file, source, path, options, strict))
        if outcome is _CRASHED:
            log.error("decoder process died on %s", path)
            return DecoderCrash(path if path is not None else "<generated>")
        return outcome

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_CRASHED = object()


def _outcome(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        return _CRASHED


def _worker_init() -> None:
    """Worker set-up: a native crash prints the worker's Python traceback to stderr."""
    import faulthandler

    faulthandler.enable()


def decoder(workers: int = 2, processes: bool = False) -> ThreadDecoder | ProcessDecoder:
    """The decoder an ingest uses: ``workers`` threads, or ``workers`` processes with ``processes``."""
    return ProcessDecoder(workers) if processes else ThreadDecoder(workers)


__all__ = ["read_file", "is_transient", "ThreadDecoder", "ProcessDecoder", "DecoderCrash", "decoder"]
