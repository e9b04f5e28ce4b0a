"""Ingest real files into a nowcast archive: ordered, idempotent, resumable, bounded in memory.

:func:`ingest` reads the files of one source in time order (times come from
file names or headers, so ordering reads no data), decodes a batch at a time
in threads or worker processes (:mod:`nowcast.decoding`), and writes them
to the Zarr archive batch by batch with :func:`nowcast.archive.write`
(idempotent, crash-safe, one writer at a time; a frame that arrives late
fills its own slot). A batch is about 64 MiB of frames (one frame when a frame is larger), so memory is
bounded by a couple of batches and the decoding of one, never by the archive.

Bad input never aborts an ingest: a file that is missing, empty, truncated,
corrupt, on another grid or CRS, or of another variable is reported (file
name and reason) and skipped; the rest is written. Files whose time is
already archived are not read again, so re-running is a no-op and an
interrupted run resumes from the archive's last commit.

:class:`Ingestor` holds the bookkeeping so that the Prefect flow
(``flows/ingest.py``) can read files on a Dask cluster and write them here.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast import archive
from nowcast.decoding import decoder, read_file
from nowcast.grids import Grid
from nowcast.schema import SchemaError, data_variables, validate
from nowcast.sources import SourceError, detect, get_reader, get_source
from nowcast.sources.common import zr_relation

log = logging.getLogger(__name__)

BATCH_BYTES = 64 * 2**20


@dataclass
class IngestReport:
    """What an ingest did: files written, files already archived, files skipped with reasons."""

    source: str
    archive: Path
    ingested: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    frames_added: int = 0

    @property
    def ok(self) -> bool:
        """True when no file was skipped."""
        return not self.skipped

    def summary(self) -> str:
        lines = [f"{self.source} -> {self.archive}: {self.frames_added} frames added from "
                 f"{len(self.ingested)} files, {len(self.unchanged)} already archived, "
                 f"{len(self.skipped)} skipped"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def list_files(source: str | None, paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by ``paths``; folders are searched recursively for the source's file names
    (any known source when ``source`` is None). A folder with none of them is an error."""
    from nowcast.sources import SOURCES

    wanted = [get_source(source)] if source else [s for s in SOURCES.values() if s.name_pattern]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and any(s.matches(p) for s in wanted))
            if not found:
                raise ValueError(f"{path}: no {source or 'radar or traffic'} files in this folder "
                                 f"(see `nowcast sources` for the file names each source reads)")
            files += found
        else:
            files.append(path)
    return files


class Ingestor:
    """Bookkeeping of one ingest: plan the files, take decoded datasets in order, write batches.

    Use :meth:`plan`, then :meth:`add` for every planned file in that order
    (with the dataset or the exception from :func:`nowcast.decoding.read_file`),
    then :meth:`finish`.
    """

    def __init__(self, source: str | None, store: str | os.PathLike, *, batch_frames: int | None = None,
                 on_error: str = "skip", options: dict | None = None):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.source = get_source(source).name if source and source != "auto" else None
        self.store = Path(store)
        self.on_error = on_error
        self.options = dict(options or {})
        self.batch_frames = batch_frames
        self.report = IngestReport(self.source or "auto", self.store)
        self._pending: list[tuple[Path, xr.Dataset]] = []
        self._frames_per_batch: int | None = None
        self._grid: Grid | None = None
        self._variable: str | None = None
        self._have = pd.DatetimeIndex([])
        if self.store.exists() and not archive.exists(self.store):
            raise archive.ArchiveError(f"{self.store}: exists but is not a nowcast archive")
        archive.check_writable(self.store)
        if archive.exists(self.store):
            current = archive.open_archive(self.store, validate_model=False)
            self._grid, self._variable = Grid.of(current), data_variables(current)[0]
            self._have = archive.times(self.store)
        if self.source:
            check_options(self.source, self.options)

    def skip(self, path: Path, reason: str) -> None:
        """Record a skipped file (or raise, with ``on_error="raise"``)."""
        if self.on_error == "raise":
            raise SourceError(path, reason)
        log.warning("skipping %s: %s", path, reason)
        self.report.skipped.append((path, reason))

    def plan(self, paths: Sequence[str | os.PathLike]) -> list[Path | None]:
        """The files to read, in time order; already archived, unreadable and duplicate-time files are
        recorded in the report and left out. A generated source plans one read of no file (None)."""
        if self.source and not get_source(self.source).needs_files:
            if paths:
                raise ValueError(f"source {self.source!r} reads no files; got {len(paths)} paths")
            return [None]
        files = list_files(self.source, paths)
        if self.source is None:
            files = self._choose_source(files)
        source = get_source(self.source) if self.source else None
        timed: list[tuple[pd.Timestamp, Path]] = []
        for path in files:
            try:
                if not source.matches(path):
                    found = detect(path)
                    if found != source.name:
                        raise SourceError(path, f"is a {found!r} file, not {source.name!r}")
                timed.append((source.time_of(path), path))
            except SourceError as err:
                self.skip(path, err.reason)
        timed.sort(key=lambda item: (item[0], str(item[1])))
        planned: list[Path | None] = []
        seen: dict[pd.Timestamp, Path] = {}
        for time, path in timed:
            if not source.sequence and time in self._have:
                self.report.unchanged.append(path)
            elif not source.sequence and time in seen:
                self.skip(path, f"same valid time {time} as {seen[time].name}")
            else:
                seen[time] = path
                planned.append(path)
        return planned

    def _choose_source(self, files: list[Path]) -> list[Path]:
        """Detect every file's source; keep the most common one (the others are skipped)."""
        detected: dict[Path, str] = {}
        for path in files:
            try:
                detected[path] = detect(path)
            except SourceError as err:
                self.skip(path, err.reason)
        if detected:
            self.source = Counter(detected.values()).most_common(1)[0][0]
            self.report.source = self.source
            check_options(self.source, self.options)
        return list(detected)

    def add(self, path: Path | None, result: xr.Dataset | BaseException) -> None:
        """Take the decoded dataset of ``path`` (or its reader's exception); write when a batch is full."""
        label = path if path is not None else Path(f"<{self.source}>")
        if isinstance(result, BaseException):
            self.skip(label, reason_of(result))
            return
        try:
            validate(result, forecast=False)
        except SchemaError as err:
            self.skip(label, f"reader output is not the data model ({err})")
            return
        problem = self._refuse(result)
        if problem:
            self.skip(label, problem)
            return
        times = pd.DatetimeIndex(result["time"].values)
        keep = ~times.isin(self._have) & ~times.isin(self._pending_times())
        if not keep.any():
            self.report.unchanged.append(label)
            return
        if self._grid is None:
            self._grid, self._variable = Grid.of(result), data_variables(result)[0]
        if self._frames_per_batch is None:
            self._frames_per_batch = 0 if result.sizes["time"] > 1 else self._batch_size(result)
        self._pending.append((label, result if keep.all() else result.isel(time=np.flatnonzero(keep))))
        if self._pending_frames() >= self._batch_size(result):
            self.flush()

    def _refuse(self, ds: xr.Dataset) -> str | None:
        """Why ``ds`` cannot go into this archive (grid, CRS or variable), or None."""
        if self._grid is not None:
            problem = self._grid.same_as(Grid.of(ds))
            if problem:
                return f"{problem} (archive grid); regrid it first (nowcast regrid) or use another archive"
        variable = data_variables(ds)[0]
        if self._variable is not None and variable != self._variable:
            return (f"variable {variable!r} differs from the archive's {self._variable!r}"
                    + (" (convert reflectivity with the zr option)" if "reflectivity" in (variable, self._variable)
                       else ""))
        return None

    def files_per_read(self) -> int:
        """How many files to decode before adding them: one archive batch of one-frame files (so
        frames larger than a batch are decoded one at a time); one file to learn the frame size,
        and one sequence file at a time."""
        return self._frames_per_batch or 1

    def _batch_size(self, ds: xr.Dataset) -> int:
        if self.batch_frames:
            return self.batch_frames
        frame = 4 * int(np.prod([n for d, n in ds.sizes.items() if d != "time"]))
        return max(1, BATCH_BYTES // max(frame, 1))

    def _pending_frames(self) -> int:
        return sum(ds.sizes["time"] for _, ds in self._pending)

    def _pending_times(self) -> pd.DatetimeIndex:
        if not self._pending:
            return pd.DatetimeIndex([])
        return pd.DatetimeIndex(np.concatenate([ds["time"].values for _, ds in self._pending]))

    def flush(self) -> None:
        """Write the pending frames to the archive (in batches of the batch size)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        combined = batch[0][1] if len(batch) == 1 else xr.concat(
            [ds for _, ds in batch], dim="time", data_vars="minimal", coords="minimal", compat="override",
            join="override", combine_attrs="override").sortby("time")  # late frames may come after later ones
        size = self._batch_size(combined)
        try:
            for start in range(0, combined.sizes["time"], size):
                self.report.frames_added += archive.write(combined.isel(time=slice(start, start + size)),
                                                          self.store)
        except archive.ArchiveLocked:
            raise
        except archive.ArchiveError as err:
            for label, _ in batch:
                self.skip(label, str(err))
            return
        self._have = self._have.append(pd.DatetimeIndex(combined["time"].values))
        self.report.ingested += [label for label, _ in batch if label not in self.report.ingested]

    def finish(self) -> IngestReport:
        """Write what is pending and return the report."""
        self.flush()
        log.info(self.report.summary())
        return self.report


def reason_of(error: BaseException) -> str:
    """Why a file was skipped, from its reader's (or the archive's) exception."""
    return error.reason if isinstance(error, SourceError) else f"{type(error).__name__}: {error}"


def check_options(source: str, options: dict) -> None:
    """Refuse reader options the source does not take (a usage error, not a bad file)."""
    params = inspect.signature(get_reader(source)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params) - {"path"})
    if unknown:
        takes = ", ".join(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise ValueError(f"source {source!r} takes no option {', '.join(unknown)} (it takes: {takes or 'none'})")
    if options.get("zr") is not None:
        try:
            zr_relation(options["zr"], None)
        except (TypeError, ValueError):
            raise ValueError(f"zr must be 'source', 'marshall-palmer' or 'a,b', got {options['zr']!r}") from None


def ingest(
    source: str | None,
    paths: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    *,
    batch_frames: int | None = None,
    on_error: str = "skip",
    workers: int = 2,
    processes: bool = False,
    client=None,
    **options,
) -> IngestReport:
    """Ingest files of ``source`` into the archive ``store``; never aborts on a bad file.

    Args:
        source: a name from :data:`nowcast.sources.SOURCES` (or an alias), or
            None / ``"auto"`` to detect it from the first file.
        paths: files and folders (searched recursively for the source's names).
        store: the Zarr archive (created if absent).
        batch_frames: frames per archive write (default: ~64 MiB of float32).
        on_error: ``"skip"`` (report and go on) or ``"raise"``.
        workers: threads (or processes) decoding the files of one batch at once.
        processes: decode in spawned worker processes (:class:`nowcast.decoding.ProcessDecoder`):
            a file whose decoder crashes natively is reported and skipped, the rest of the
            batch is kept. Threads otherwise (faster to start).
        client: a ``distributed.Client``: its workers decode the files and write their frames into
            the archive themselves (:func:`stage_files`); this process holds the archive's lock and
            commits. Sequence sources (one file, many frames) are decoded here.
        options: passed to the reader (e.g. ``zr="source"``, ``coarsen=4``,
            ``holidays=...``).

    Returns:
        An :class:`IngestReport`.
    """
    job = Ingestor(source, store, batch_frames=batch_frames, on_error=on_error, options=options)
    planned = job.plan(paths)
    kind = get_source(job.source) if job.source else None
    if client is not None and planned and kind.needs_files and not kind.sequence:
        _ingest_on_cluster(job, planned, client)
        return job.finish()
    position = 0
    with decoder(workers, processes) as decode:
        while position < len(planned):
            chunk = planned[position:position + job.files_per_read()]
            for path, result in zip(chunk, decode.map(kind, chunk, job.options, on_error == "raise")):
                job.add(path, result)
            position += len(chunk)
    return job.finish()


def stage_files(source: str, paths: Sequence[str], store: str, options: dict,
                slot_range: tuple[int, int]) -> list[tuple[str, list | str]]:
    """Worker side of a cluster ingest: decode ``paths`` and write their frames into their slots of
    ``store`` (uncommitted, within ``slot_range``). Returns per file the times written or why it was
    skipped; needs no Prefect API and sends no frames back."""
    out: list[tuple[str, list | str]] = []
    for path in paths:
        result = read_file(source, path, options)
        if isinstance(result, BaseException):
            out.append((path, reason_of(result)))
            continue
        try:
            out.append((path, list(archive.stage(result, store, slot_range).values)))
        except (archive.ArchiveError, SchemaError) as err:
            out.append((path, str(err)))
    return out


def _ingest_on_cluster(job: Ingestor, planned: list[Path], client) -> None:
    """Map :func:`stage_files` over groups of files that share no Zarr chunk; commit each group's frames."""
    from distributed import as_completed

    source = get_source(job.source)
    with archive.lock(job.store):
        while planned and not archive.exists(job.store):  # the first good file creates the archive here
            first = planned.pop(0)
            job.add(first, read_file(source, first, job.options))
            job.flush()
        if not planned:
            return
        times = pd.DatetimeIndex([source.time_of(p) for p in planned])
        archive.reserve(job.store, times)
        per_chunk = archive.chunk_frames(job.store)
        chunks = archive.slots(job.store, times) // per_chunk
        groups = {c: [str(p) for p, k in zip(planned, chunks) if k == c] for c in np.unique(chunks)}
        futures = [client.submit(stage_files, source.name, files, str(job.store), job.options,
                                 (int(c) * per_chunk, (int(c) + 1) * per_chunk), pure=False)
                   for c, files in groups.items()]
        for future in as_completed(futures):
            staged = []
            for path, outcome in future.result():
                if isinstance(outcome, str):
                    job.skip(Path(path), outcome)
                elif outcome:
                    staged += outcome
                    job.report.ingested.append(Path(path))
                else:
                    job.report.unchanged.append(Path(path))
            job.report.frames_added += archive.commit(job.store, staged)
