"""Learning in the Lagrangian frame (L-CNN, Ritvanen et al. 2023; LUPIN, Pavlik et al. 2024).

A network with ``frame="lagrangian"`` (:mod:`nowcast.models.base`) learns
how rain evolves while it moves, not how it moves. Per sample, with the
issue time at the last of the ``T_in`` input frames:

1. :func:`motion`: optical flow of the last :data:`N_INPUT` input frames,
   the Lagrangian baseline's own estimate (:func:`nowcast.baselines.motion_field`:
   pysteps Lucas-Kanade in dBR);
2. :func:`to_issue_time`: input frames advected forward to the issue time,
   target frames backward to it, with the baseline's semi-Lagrangian scheme
   (:func:`nowcast.baselines.advect`). Cells whose trajectory starts outside
   the domain have no history and take the issue-time frame's value;
3. the network maps the advected inputs to the evolution in that frame, each
   output a residual on the frame before it, from a zero-initialised readout;
4. :func:`from_issue_time`: lead ``k`` advected ``k`` steps forward, as the
   baseline advects the issue-time frame: NaN where the trajectory starts
   outside the domain or at a cell without coverage.

Where training scores the network (:data:`LOSSES`): ``observed`` (the
default; LUPIN's differentiable advection) advects its outputs forward
(:func:`advect_forward`, the forecast's own step 4) and compares them with the
observed frames; ``advected`` (L-CNN) compares them with the target frames
advected back to the issue time. Both advections interpolate bilinearly, so
``advected`` scores against targets blurred by a back-and-forth interpolation
that the forecast, which only advects forward, never undoes; ``observed``
learns the forecast as it will be issued (``bench/results/radar-ablations.md``).

So an untrained network is Lagrangian persistence, i.e. the baseline
(:func:`nowcast.baselines.lagrangian_extrapolation`). Training windows are
advected once and cached on disk (:func:`attach`, :class:`WindowCache`).
Only rain (rain rate, accumulation) is advected; crowd flows are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from nowcast import anomaly, archive, baselines

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nowcast.transforms import Transform
    from nowcast.windows import Splits, WindowDataset

log = logging.getLogger(__name__)

#: Input frames of the motion estimate, method and dBR threshold (mm h-1): the Lagrangian baseline's defaults.
N_INPUT, METHOD, THRESHOLD = 3, "LK", 0.1
#: Bump when the cached windows would change for the same archive and settings.
CACHE_VERSION = 2
#: Where training scores a Lagrangian-frame network (module docstring); the first is the default.
LOSSES = ("observed", "advected")
#: Cache chunks: one window by this many cells square, so a training tile reads only its own chunks.
CHUNK_CELLS = 64
#: Windows advected and written per append to the cache.
BUILD_BATCH = 16
#: Caches up to this many bytes of frames are read into memory once (per process) instead of per sample.
IN_MEMORY_BYTES = 1 << 30


def check_frame(frame: str, variable: str) -> None:
    """Refuse an unknown ``frame``, the Lagrangian frame for a variable that is not advected and
    the anomaly frame for one without a weekly cycle."""
    from nowcast.models.base import FRAMES

    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; choose one of {list(FRAMES)}")
    if frame == "anomaly":
        anomaly.check_variable(variable)
    if frame == "lagrangian" and variable not in baselines.RAIN_VARIABLES:
        raise ValueError(
            f"the Lagrangian frame moves rain along its optical flow; '{variable}' is not advected "
            f"(crowd flows stay on their grid cells), so train it in the eulerian frame")


def check_loss(loss: str) -> None:
    """Refuse a Lagrangian-frame loss that is not one of :data:`LOSSES`."""
    if loss not in LOSSES:
        raise ValueError(f"unknown Lagrangian-frame loss {loss!r}; choose one of {list(LOSSES)}")


def motion(inputs: np.ndarray) -> np.ndarray:
    """Motion ``(2, H, W)`` (columns right, rows down; cells per step) of input frames ``[T_in, H, W]`` (mm h-1)."""
    if len(inputs) < 2:
        raise ValueError(f"the Lagrangian frame needs at least 2 input frames for optical flow, got {len(inputs)}")
    return baselines.motion_field(inputs[-N_INPUT:], method=METHOD, threshold_mmh=THRESHOLD)


def to_issue_time(frames: np.ndarray, t_in: int, velocity: np.ndarray) -> np.ndarray:
    """Frames ``[T, H, W]`` (mm h-1, the issue time at index ``t_in - 1``) advected to the issue time.

    Frame ``i`` moves ``t_in - 1 - i`` steps along ``velocity`` (forward for
    inputs, backward for targets). Cells advected in from outside the domain
    (NaN) take the issue-time frame's value; float32 out.
    """
    issue = frames[t_in - 1]
    parts = [frames[t_in - 1:t_in]]
    if t_in > 1:
        parts.insert(0, baselines.advect(frames[t_in - 2::-1], velocity, threshold_mmh=THRESHOLD)[::-1])
    if len(frames) > t_in:
        parts.append(baselines.advect(frames[t_in:], velocity, threshold_mmh=THRESHOLD, backward=True))
    advected = np.concatenate(parts)
    return np.where(np.isnan(advected), issue, advected).astype("f4")


def from_issue_time(fields: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """Lead ``k`` (1-based) of ``fields [n, H, W]`` (mm h-1, at the issue time) advected ``k`` steps forward."""
    return baselines.advect(fields, velocity, threshold_mmh=THRESHOLD).astype("f4")


def departures(velocity: np.ndarray, n_steps: int) -> np.ndarray:
    """Where lead ``k`` (1-based) of a forward advection takes each cell's value from: ``[n_steps, 2, H, W]``
    (row, column; cells, float32), the trajectories of :func:`from_issue_time` (outside ``[0, H - 1] x
    [0, W - 1]``: NaN there)."""
    rows, cols = velocity.shape[1:]
    out = np.empty((n_steps, 2, rows, cols), dtype="f4")
    for k, displacement in enumerate(baselines.trajectories(velocity, n_steps)):
        baselines.origins(slice(0, rows), displacement, out[k])
    return out


def advect_forward(fields: torch.Tensor, origin: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Differentiable :func:`from_issue_time` of network outputs, on a tile: ``fields [B, T, C, h, w]``
    (transformed units, linear in dBR as the advection's interpolation is) sampled bilinearly at ``origin
    [B, T, 2, h, w]`` (:func:`departures` relative to the tile's first cell); where that lies outside the
    tile, ``fill`` (same shape as ``fields``, e.g. the target, so those cells score nothing)."""
    import torch
    import torch.nn.functional as F

    b, t, c, h, w = fields.shape
    row, col = origin[:, :, 0], origin[:, :, 1]
    inside = (row >= 0) & (row <= h - 1) & (col >= 0) & (col <= w - 1)
    grid = torch.stack([2 * col / max(w - 1, 1) - 1, 2 * row / max(h - 1, 1) - 1], dim=-1)
    sampled = F.grid_sample(fields.reshape(b * t, c, h, w), grid.reshape(b * t, h, w, 2).to(fields.dtype),
                            mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.where(inside[:, :, None], sampled.reshape(b, t, c, h, w), fill)


def predict(model: nn.Module, transform: Transform, frames: np.ndarray, n_leads: int, **options: Any) -> np.ndarray:
    """:func:`nowcast.forecast.predict` in the Lagrangian frame: physical ``[T_in, 1, H, W]`` →
    ``[n_leads, 1, H, W]``.

    NaN where the baseline has NaN: trajectories from outside the domain or
    from cells without coverage at the issue time.
    """
    from nowcast.forecast import predict as predict_frames

    inputs = frames[:, 0]
    velocity = motion(inputs)
    advected = to_issue_time(inputs, len(inputs), velocity)[:, None]
    fields = predict_frames(model, transform, advected, n_leads, **options)
    return from_issue_time(fields[:, 0], velocity)[:, None]


class WindowCache:
    """Lagrangian-frame windows of one source on disk, a Zarr store written by :func:`window_cache`.

    Variables ``frames (window, time, y, x)``: the ``T_in + T_out`` frames
    (mm h-1, float32) advected to the window's issue time; ``observed
    (window, lead, y, x)``: the ``T_out`` target frames as observed;
    ``departure (window, lead, point, y, x)``: their :func:`departures`;
    ``motion (window, component, y, x)``: the optical flow (cells per step);
    ``start (window)``: the window's first time index in the source.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._ds: xr.Dataset | None = None
        self._memory: dict[str, np.ndarray] = {}
        self.index = {int(s): i for i, s in enumerate(self.dataset["start"].values)}

    @property
    def dataset(self) -> xr.Dataset:
        if self._ds is None:
            self._ds = xr.open_zarr(self.path, chunks=None, consolidated=False)
        return self._ds

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _ds=None, _memory={})  # reopened lazily in each DataLoader worker

    def _read(self, name: str, start: int, y: slice, x: slice) -> np.ndarray:
        """Variable ``name`` of the window starting at time index ``start``, cells ``y, x`` (float32).

        A variable of at most :data:`IN_MEMORY_BYTES` is read whole on first
        use: per-sample Zarr reads cost more than a tiny model's training step.
        """
        variable = self.dataset[name]
        if name not in self._memory and variable.size * 4 <= IN_MEMORY_BYTES:
            self._memory[name] = np.asarray(variable.values, dtype="f4")
        if name in self._memory:
            return self._memory[name][self.index[int(start)], ..., y, x]
        return np.asarray(variable.isel(window=self.index[int(start)], y=y, x=x).values, dtype="f4")

    def window(self, start: int, y: slice, x: slice) -> np.ndarray:
        """Advected frames ``[T, 1, h, w]`` of the window starting at time index ``start``."""
        return self._read("frames", start, y, x)[:, None]

    def observed(self, start: int, y: slice, x: slice) -> tuple[np.ndarray, np.ndarray]:
        """The window's target frames as observed ``[T_out, 1, h, w]`` (mm h-1) and where their forward
        advection takes each cell from, relative to the tile's first cell ``[T_out, 2, h, w]`` (row, column)."""
        offset = np.array([y.start or 0, x.start or 0], dtype="f4")[:, None, None]
        return self._read("observed", start, y, x)[:, None], self._read("departure", start, y, x) - offset

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def cache_key(source: str | os.PathLike | xr.Dataset, dataset: WindowDataset, starts: np.ndarray) -> str:
    """What the cached windows depend on, hashed: the archive (path and committed times) or the
    in-memory data, the window geometry and starts, and the motion and advection settings."""
    digest = hashlib.sha256()
    settings = {"version": CACHE_VERSION, "variable": str(dataset.variable), "t_in": dataset.t_in,
                "t_out": dataset.t_out, "shape": [dataset.height, dataset.width], "n_input": N_INPUT,
                "method": METHOD, "threshold": THRESHOLD}
    if isinstance(source, xr.Dataset):
        digest.update(np.ascontiguousarray(source[dataset.variable].values).tobytes())
        committed = dataset.times
    else:
        settings["archive"] = str(Path(source).resolve())
        committed = archive.times(source)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(committed.as_unit("ns").asi8.tobytes())
    digest.update(np.asarray(starts, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def window_cache(source: str | os.PathLike | xr.Dataset, dataset: WindowDataset, starts: np.ndarray,
                 folder: str | os.PathLike) -> WindowCache:
    """The cache of the windows at ``starts`` of ``dataset``, built into ``folder/<key>.zarr`` unless there."""
    starts = np.unique(np.asarray(starts, dtype=np.int64))
    path = Path(folder) / f"{cache_key(source, dataset, starts)}.zarr"
    if path.exists():
        log.info("Lagrangian-frame windows from the cache %s", path)
        return WindowCache(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    cy, cx = min(CHUNK_CELLS, dataset.height), min(CHUNK_CELLS, dataset.width)
    encoding = {"frames": {"chunks": (1, dataset.length, cy, cx)}, "motion": {"chunks": (1, 2, cy, cx)},
                "observed": {"chunks": (1, dataset.t_out, cy, cx)},
                "departure": {"chunks": (1, dataset.t_out, 2, cy, cx)}}
    log.info("building the Lagrangian-frame window cache: %d windows (optical flow and advection, "
             "about 1 s each on one core) into %s", len(starts), path)
    try:
        for first in range(0, len(starts), BUILD_BATCH):
            if first:
                log.info("  %d of %d windows cached", first, len(starts))
            batch = starts[first:first + BUILD_BATCH]
            frames, velocities, observed, origins = [], [], [], []
            for start in batch:
                window = dataset.read(int(start), int(start) + dataset.length)[:, 0]
                velocities.append(motion(window[:dataset.t_in]).astype("f4"))
                frames.append(to_issue_time(window, dataset.t_in, velocities[-1]))
                observed.append(window[dataset.t_in:])
                origins.append(departures(velocities[-1], dataset.t_out))
            part = xr.Dataset({"frames": (("window", "time", "y", "x"), np.stack(frames)),
                               "observed": (("window", "lead", "y", "x"), np.stack(observed)),
                               "departure": (("window", "lead", "point", "y", "x"), np.stack(origins)),
                               "motion": (("window", "component", "y", "x"), np.stack(velocities)),
                               "start": ("window", batch)})
            if first == 0:
                part.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False, zarr_format=2)
            else:
                part.to_zarr(tmp, append_dim="window", consolidated=False)
        seconds = time.perf_counter() - started
        zarr.open_group(str(tmp), mode="r+").attrs.update(
            windows=len(starts), build_seconds=round(seconds, 2), t_in=dataset.t_in, t_out=dataset.t_out,
            n_input=N_INPUT, method=METHOD, threshold_mmh=THRESHOLD)
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same cache first
            if not path.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    cache = WindowCache(path)
    log.info("Lagrangian-frame cache %s: %d windows in %.1f s, %.1f MB on disk", path, len(starts), seconds,
             cache.size_bytes() / 2**20)
    return cache


def default_cache_folder(source: str | os.PathLike | xr.Dataset, run_dir: str | os.PathLike) -> Path:
    """``<archive>.lagrangian`` beside an archive (shared by its runs); ``RUN/lagrangian-cache`` for in-memory data."""
    return Path(run_dir) / "lagrangian-cache" if isinstance(source, xr.Dataset) else Path(f"{source}.lagrangian")


def attach(splits: Splits, source: str | os.PathLike | xr.Dataset, folder: str | os.PathLike,
           loss: str = LOSSES[0]) -> WindowCache:
    """Serve every split's samples in the Lagrangian frame, from the cache of all their windows; with
    ``loss="observed"`` their targets as observed, with where the forward advection takes each cell from."""
    check_frame("lagrangian", str(splits.train.variable))
    check_loss(loss)
    parts = [split for split in (splits.train, splits.val, splits.test) if len(split)]
    starts = np.concatenate([np.unique(split.samples[:, 0]) for split in parts])
    cache = window_cache(source, splits.train, starts, folder)
    for split in (splits.train, splits.val, splits.test):
        split.cache, split.observed_targets = cache, loss == "observed"
    return cache
