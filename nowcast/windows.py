"""Training samples cut lazily from an archive: ``T_in`` input frames → ``T_out`` target frames.

A :class:`WindowDataset` never loads the archive: it keeps the sample index
(window start × spatial tile) and reads the ``T_in + T_out`` frames of one
sample from Zarr when asked. Windows that cross a time gap are skipped,
large domains can be tiled into fixed patches (keeping only patches whose
wet fraction reaches a minimum), and :func:`split_windows` assigns whole time
blocks to train / validation / test so that no frame is shared between
splits. :func:`split_datasets` does all of it and fits the transform on the
training split only.

Samples are ``(x, y)`` float32 tensors ``[T_in, C, h, w]`` and
``[T_out, C, h, w]`` (``C`` = 1 for radar, 2 for in/out flow), in the
transform's units. A dataset's ``cache`` (:class:`nowcast.lagrangian.WindowCache`)
replaces the observed window frames by precomputed ones (the Lagrangian frame);
its ``climatology`` (:func:`nowcast.anomaly.attach`) turns them into departures
from the weekly cycle (the anomaly frame).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from nowcast import anomaly, archive
from nowcast.schema import data_variables, time_step
from nowcast.transforms import Transform, make

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: ``block`` value of :func:`split_windows` that cuts every event chronologically on its own.
EACH_EVENT = "each-event"
SCAN_FRAMES = 64  # frames read at a time when scanning the archive


def open_frames(source: str | os.PathLike | xr.Dataset, variable: str | None = None
                ) -> tuple[xr.DataArray, xr.Dataset]:
    """The lazily readable data variable of ``source`` and its dataset (for metadata).

    For an archive path the variable is opened without dask (xarray's lazy
    backend array), so indexing one window reads only that window's chunks.
    """
    if isinstance(source, xr.Dataset):
        ds = source
        variable = variable or data_variables(ds)[0]
        return ds[variable], ds
    ds = archive.open_archive(source)
    variable = variable or data_variables(ds)[0]
    return archive.open_archive(source, validate_model=False, chunks=None)[variable], ds


def gapless_starts(times: Sequence, length: int, step: pd.Timedelta) -> np.ndarray:
    """Indices ``i`` where ``times[i : i + length]`` are consecutive steps (no gap)."""
    t = pd.DatetimeIndex(times).as_unit("ns").asi8
    if len(t) < length:
        return np.zeros(0, dtype=np.int64)
    span = t[length - 1:] - t[:len(t) - length + 1]
    return np.flatnonzero(span == (length - 1) * step.value).astype(np.int64)


def tile_origins(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of ``tile``-long tiles every ``stride`` cells, the last one flush with the edge."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def event_ids(times: Sequence, step: pd.Timedelta | str) -> np.ndarray:
    """Per frame, the number of its event: runs of consecutive steps, a new one after every gap."""
    t = pd.DatetimeIndex(times).as_unit("ns").asi8
    return np.concatenate([[0], np.cumsum(np.diff(t) != pd.Timedelta(step).value)]).astype(int) if len(t) else \
        np.zeros(0, dtype=int)


def split_windows(
    times: Sequence,
    length: int,
    step: pd.Timedelta | str,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    block: pd.Timedelta | str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Gapless window starts of each split, by time blocks, with no frame in two splits.

    Every frame is given to one split. With ``block=None`` the time axis is
    cut chronologically (training first, then validation, then test); a
    validation or test share asked for gets at least ``length`` frames (one
    window), taken from training, so small archives still validate.
    ``block="each-event"`` cuts every event (run of frames between gaps)
    chronologically on its own: every event trains and validates, where a cut
    of the whole axis leaves the first events training and the last validating.
    With a ``block`` duration (e.g. ``"1D"``) or ``"event"`` the blocks
    (events) are shuffled with ``seed`` and dealt out in the given fractions,
    each share asked for getting at least one block while training keeps one.
    A window belongs to a split only if all its frames do, so windows
    straddling a split boundary are dropped.

    Returns: ``{"train": starts, "val": starts, "test": starts}`` (int arrays).
    """
    step = pd.Timedelta(step)
    index = pd.DatetimeIndex(times).as_unit("ns")
    n = len(index)
    fractions = np.asarray(fractions, dtype="f8") / np.sum(fractions)
    if block is None:
        owner = np.repeat(np.arange(len(SPLITS)), _shares(n, fractions, minimum=length))
    elif block == EACH_EVENT:
        runs = np.bincount(event_ids(index, step)) if n else []
        owner = np.concatenate([np.zeros(0, int)] + [np.repeat(np.arange(len(SPLITS)),
                                                               _shares(int(r), fractions, minimum=length))
                                                     for r in runs])
    else:
        if block == "event":
            block_id = event_ids(index, step)
        else:
            block_id = ((index.asi8 - index.asi8[0]) // pd.Timedelta(block).value) if n else np.zeros(0, int)
        n_blocks = int(block_id.max()) + 1 if n else 0
        order = np.random.default_rng(seed).permutation(n_blocks)
        block_owner = np.empty(n_blocks, dtype=int)
        block_owner[order] = np.repeat(np.arange(len(SPLITS)), _shares(n_blocks, fractions, minimum=1))
        owner = block_owner[block_id]
    changes = np.concatenate([[0], np.cumsum(owner[1:] != owner[:-1])]) if n else owner
    starts = gapless_starts(index, length, step)
    ends = starts + length - 1
    same = changes[ends] == changes[starts]
    return {name: starts[same & (owner[starts] == k)] for k, name in enumerate(SPLITS)}


def _shares(n: int, fractions: np.ndarray, minimum: int) -> np.ndarray:
    """``n`` items dealt in ``fractions`` (train, val, test); val and test, when asked for, get
    at least ``minimum`` as long as training keeps ``minimum``."""
    sizes = np.diff(np.round(np.cumsum(np.concatenate([[0.0], fractions])) * n).astype(int))
    for k in (1, 2):
        if fractions[k] > 0 and sizes[k] < minimum and sizes[0] - (minimum - sizes[k]) >= minimum:
            sizes[0] -= minimum - sizes[k]
            sizes[k] = minimum
    return sizes


class WindowDataset(Dataset):
    """``(x, y)`` samples of an archive (path, read lazily) or an in-memory data-model dataset.

    Args:
        source: archive path or data-model ``xarray.Dataset``.
        t_in, t_out: input and target frames per sample.
        starts: window start indices (time positions) to use; default all
            gapless windows.
        variable: data variable; default the dataset's first quantity.
        transform: applied to every sample (None: physical units, NaN → 0).
        patch: tile size (int or ``(h, w)``); None for the whole domain.
        stride: tile step (default ``patch``: non-overlapping tiles).
        min_wet_fraction: keep only samples whose fraction of cells at or
            above ``wet_threshold`` (averaged over the window's frames)
            reaches this (0 keeps all and reads nothing up front).
    """

    def __init__(
        self,
        source: str | os.PathLike | xr.Dataset,
        t_in: int,
        t_out: int,
        *,
        starts: np.ndarray | None = None,
        variable: str | None = None,
        transform: Transform | None = None,
        patch: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        min_wet_fraction: float = 0.0,
        wet_threshold: float = 0.1,
    ) -> None:
        self._source = source if isinstance(source, xr.Dataset) else str(source)
        data, ds = open_frames(source, variable)
        self._data: xr.DataArray | None = data
        self.variable = data.name
        self.t_in, self.t_out = int(t_in), int(t_out)
        self.length = self.t_in + self.t_out
        self.times = pd.DatetimeIndex(ds["time"].values)
        self.step = time_step(ds)
        self.channels = ds.sizes.get("flow", 1)
        self.height, self.width = ds.sizes["y"], ds.sizes["x"]
        self.transform = transform
        self.cache = None
        self.observed_targets = False
        self.climatology: np.ndarray | None = None
        if starts is None:
            starts = gapless_starts(self.times, self.length, self.step)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.patch = self._pair(patch) if patch is not None else (self.height, self.width)
        if self.patch[0] > self.height or self.patch[1] > self.width:
            raise ValueError(f"patch {self.patch} is larger than the domain {(self.height, self.width)}")
        stride = self._pair(stride) if stride is not None else self.patch
        self.tiles = [(y0, x0) for y0 in tile_origins(self.height, self.patch[0], stride[0])
                      for x0 in tile_origins(self.width, self.patch[1], stride[1])]
        self.samples = np.stack(np.meshgrid(self.starts, np.arange(len(self.tiles)), indexing="ij"),
                                axis=-1).reshape(-1, 2)
        if min_wet_fraction > 0 and len(self.samples):
            wet = self._wet_fractions(wet_threshold)
            self.samples = self.samples[wet >= min_wet_fraction]
            log.info("%d of %d samples have a wet fraction >= %.2f", len(self.samples), wet.size,
                     min_wet_fraction)

    @staticmethod
    def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
        return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self._source, str):
            state["_data"] = None  # reopened lazily in each DataLoader worker
        return state

    @property
    def data(self) -> xr.DataArray:
        if self._data is None:
            self._data, _ = open_frames(self._source, self.variable)
        return self._data

    def __len__(self) -> int:
        return len(self.samples)

    def tile_slices(self, tile: int) -> tuple[slice, slice]:
        """The (y, x) cells of tile number ``tile``."""
        (y0, x0), (h, w) = self.tiles[tile], self.patch
        return slice(y0, y0 + h), slice(x0, x0 + w)

    def read(self, start: int, stop: int, tile: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` (of one tile, or the whole domain) in physical units, ``[T, C, h, w]``."""
        sel: dict = {"time": slice(start, stop)}
        if tile is not None:
            sel["y"], sel["x"] = self.tile_slices(tile)
        values = np.asarray(self.data.isel(sel).values, dtype="f4")
        return values if values.ndim == 4 else values[:, None]

    def read_window(self, start: int, tile: int) -> np.ndarray:
        """The ``T_in + T_out`` frames of one sample in physical units, from ``cache`` when set."""
        if self.cache is None:
            return self.read(start, start + self.length, tile)
        return self.cache.window(start, *self.tile_slices(tile))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """``(x, y)``: inputs ``[T_in, C, h, w]`` and targets ``[T_out, C, h, w]``, transformed; with
        ``observed_targets`` (and a Lagrangian ``cache``), ``(x, y, observed, origin)``: also the targets as
        observed and where the forecast's forward advection takes each cell from
        (:meth:`nowcast.lagrangian.WindowCache.observed`).
        """
        start, tile = (int(v) for v in self.samples[index])
        frames = self.read_window(start, tile)
        if self.climatology is not None:
            clim = self.climatology[(slice(start, start + self.length), ..., *self.tile_slices(tile))]
            frames = anomaly.to_anomaly(self.transform, frames, clim)
        else:
            frames = self.transform.forward(frames) if self.transform else np.nan_to_num(frames, nan=0.0)
        frames = torch.from_numpy(np.ascontiguousarray(frames))
        if self.observed_targets:
            observed, origin = self.cache.observed(start, *self.tile_slices(tile))
            return (frames[:self.t_in], frames[self.t_in:], torch.from_numpy(self.transform.forward(observed)),
                    torch.from_numpy(origin))
        return frames[:self.t_in], frames[self.t_in:]

    def frame_runs(self) -> list[tuple[int, int]]:
        """The sample windows' frames as sorted, merged ``(start, stop)`` index runs."""
        runs: list[tuple[int, int]] = []
        for start in np.unique(self.samples[:, 0]) if len(self.samples) else []:
            stop = int(start) + self.length
            if runs and start <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][1], stop))
            else:
                runs.append((int(start), stop))
        return runs

    def iter_frames(self, chunk: int = SCAN_FRAMES) -> Iterator[np.ndarray]:
        """Every frame the samples use, once, in chunks of at most ``chunk`` frames (physical units)."""
        for start, stop in self.frame_runs():
            for a in range(start, stop, chunk):
                yield self.read(a, min(a + chunk, stop))

    def _wet_fractions(self, threshold: float) -> np.ndarray:
        """Per sample, the mean over its frames of the tile's fraction of cells >= ``threshold``."""
        lo = int(self.samples[:, 0].min())
        hi = int(self.samples[:, 0].max()) + self.length
        per_frame = np.zeros((hi - lo, len(self.tiles)))
        (h, w) = self.patch
        for a in range(lo, hi, SCAN_FRAMES):
            wet = self.read(a, min(a + SCAN_FRAMES, hi)) >= threshold
            for k, (y0, x0) in enumerate(self.tiles):
                per_frame[a - lo:a - lo + len(wet), k] = wet[..., y0:y0 + h, x0:x0 + w].mean(axis=(1, 2, 3))
        cumulative = np.concatenate([np.zeros((1, len(self.tiles))), np.cumsum(per_frame, axis=0)])
        start, tile = self.samples[:, 0] - lo, self.samples[:, 1]
        return (cumulative[start + self.length, tile] - cumulative[start, tile]) / self.length


@dataclass
class Splits:
    """Train / validation / test datasets sharing one transform (fitted on train)."""

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    transform: Transform


def split_datasets(
    source: str | os.PathLike | xr.Dataset,
    t_in: int,
    t_out: int,
    *,
    variable: str | None = None,
    transform: str | Transform | None = None,
    patch: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    min_wet_fraction: float = 0.0,
    wet_threshold: float = 0.1,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    block: pd.Timedelta | str | None = None,
    seed: int = 0,
) -> Splits:
    """Split ``source`` into time-block datasets; fit the transform on the training frames only.

    ``transform`` is a :class:`Transform`, a kind (``"dbr"``, ``"log1p"``,
    ``"minmax"``, ``"identity"``) or None for the variable's default
    (:data:`nowcast.transforms.DEFAULT_KIND`: dBR for rain rate, log1p up to
    the 99.9 % quantile for crowd flow). ``fractions``, ``block`` and ``seed``
    split the time axis (:func:`split_windows`). Validation and test keep every
    patch (no wet-fraction filter), so their scores describe the whole domain.
    """
    data, ds = open_frames(source, variable)
    source = source if isinstance(source, xr.Dataset) else Path(source)
    parts = split_windows(ds["time"].values, t_in + t_out, time_step(ds), fractions=fractions,
                          block=block, seed=seed)
    common = dict(variable=data.name, patch=patch, stride=stride)
    train = WindowDataset(source, t_in, t_out, starts=parts["train"], min_wet_fraction=min_wet_fraction,
                          wet_threshold=wet_threshold, **common)
    if not isinstance(transform, Transform):
        transform = make(transform, str(data.name), train.iter_frames())
    train.transform = transform
    val, test = (WindowDataset(source, t_in, t_out, starts=parts[name], transform=transform, **common)
                 for name in ("val", "test"))
    log.info("windows of %d+%d frames: %d train, %d val, %d test samples", t_in, t_out,
             len(train), len(val), len(test))
    return Splits(train, val, test, transform)
