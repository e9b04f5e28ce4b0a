"""From a trained checkpoint and observations to a georeferenced forecast in the data model.

:func:`forecast` takes the last ``T_in`` frames at or before the issue time,
scales them with the transform stored in the checkpoint, runs the network
(on the whole domain, or on overlapping tiles blended with tapered weights
when the domain is large), inverts the transform, masks the cells without
coverage (NaN in any input frame) and wraps the fields with
:func:`nowcast.schema.make_forecast` on the observations' grid and CRS.
:func:`forecast_with_baselines` adds Eulerian persistence and Lagrangian
extrapolation (historical average for crowd flows) issued from the same
frames, so every forecast can be compared; :func:`issue_nowcasts` issues them
at many times and writes the products (``nowcast forecast`` and
``flows/forecast.py``). A model trained in the Lagrangian frame (its
checkpoint's ``frame``) forecasts in it (:func:`nowcast.lagrangian.predict`),
as does one trained on anomalies from the weekly cycle (:func:`nowcast.anomaly.predict`).

:func:`issue_nowcasts` opens the archive once, plans every issue time from
the checkpoints' metadata (:class:`PlannedModel`: input and output frames,
no weights), loads a network only when one of its forecasts is computed,
and reads each issue time's input frames once for every method. On large
grids the tiles' blend comes out a band of rows at a time
(:func:`predict_rows`) and a large tiled forecast keeps its leads in scratch
files, written as the bands come and read back a lead at a time by the
product writers, so its peak memory no longer holds the leads
(``bench/big_grid.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast import anomaly, baselines, lagrangian
from nowcast.checkpoint import CheckpointError, file_hash, load_run, read_metadata
from nowcast.products.atomic import check_writable, remove_stale, scratch_tag
from nowcast.schema import data_variables, make_forecast, time_step, validate
from nowcast.transforms import Transform, from_dict

if TYPE_CHECKING:  # torch is imported where a network runs: the baselines alone never load it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Domains up to this many cells run whole; larger ones are tiled (all presets are fully convolutional).
MAX_WHOLE_CELLS = 512 * 512
TILE_BATCH = 8
#: Tiled forecasts of more float32 bytes than this keep their leads in ``scratch`` files (:func:`forecast`).
SCRATCH_BYTES = 64 * 2**20


class MissingInputError(ValueError):
    """The input window is incomplete; ``missing`` lists the absent times."""

    def __init__(self, reference_time: pd.Timestamp, missing: pd.DatetimeIndex, t_in: int, step: pd.Timedelta):
        self.reference_time, self.missing = reference_time, missing
        shown = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in missing[:12])
        more = f" and {len(missing) - 12} more" if len(missing) > 12 else ""
        super().__init__(f"cannot forecast from {reference_time:%Y-%m-%d %H:%M}: the {t_in} input frames "
                         f"every {_minutes(step)} lack {len(missing)} time(s): {shown}{more}")
        self._args = (reference_time, missing, t_in, step)

    def __reduce__(self):  # picklable across Dask and process workers
        return (type(self), self._args)


def _minutes(step: pd.Timedelta) -> str:
    return f"{step.total_seconds() / 60:g} min"


def input_times(reference_time: Any, t_in: int, step: pd.Timedelta) -> pd.DatetimeIndex:
    """The ``t_in`` frame times ending at ``reference_time``, oldest first."""
    reference_time = pd.Timestamp(reference_time)
    return pd.DatetimeIndex([reference_time - k * step for k in range(t_in - 1, -1, -1)])


def newest_complete_window(times: Sequence, t_in: int, step: pd.Timedelta) -> pd.Timestamp | None:
    """Latest time whose ``t_in`` frames ending there are all present (None if there is none)."""
    from nowcast.windows import gapless_starts

    times = pd.DatetimeIndex(times)
    starts = gapless_starts(times, t_in, step)
    return times[starts[-1] + t_in - 1] if len(starts) else None


def issue_time(times: Sequence, at: Any, step: pd.Timedelta) -> pd.Timestamp:
    """The issue time for a request at ``at`` (default: the newest time in ``times``).

    It is the last time step at or before ``at`` on the time grid of the
    observations: an archived frame up to one step before ``at``, or, when
    that frame is missing, the grid time it should have had (whose absence
    then makes the input window incomplete).
    """
    times = pd.DatetimeIndex(times)
    if at is None:
        if not len(times):
            raise ValueError("the observations hold no frames")
        return times[-1]
    at = pd.Timestamp(at)
    if at.tz is not None:
        at = at.tz_convert("UTC").tz_localize(None)
    earlier = times[times <= at]
    return earlier[-1] + ((at - earlier[-1]) // step) * step if len(earlier) else at


def select_inputs(obs: xr.Dataset, t_in: int, at: Any = None) -> xr.Dataset:
    """The ``t_in`` consecutive frames of ``obs`` at or before ``at`` (default: the last time), as lazy
    as ``obs`` (each frame is read on its own to check it).

    The window ends at :func:`issue_time`; frames that are absent, or entirely
    NaN, count as missing.

    Raises:
        MissingInputError: naming every missing time.
    """
    step = time_step(obs)
    available = pd.DatetimeIndex(obs["time"].values)
    reference = issue_time(available, at, step)
    wanted = input_times(reference, t_in, step)
    present = wanted[wanted.isin(available)]
    window = obs.sel(time=present)
    data = window[data_variables(obs)[0]]
    empty = np.array([bool(np.isnan(data[k].values).all()) for k in range(len(present))], dtype=bool)
    missing = wanted[~wanted.isin(present[~empty])]
    if len(missing):
        raise MissingInputError(reference, missing, t_in, step)
    return window


def _frames_at(obs: xr.Dataset, times: pd.DatetimeIndex) -> xr.Dataset:
    """``obs`` at ``times`` (all among its times), loaded with no second copy of the frames: ``obs``
    itself when it holds just those times, else dask variables computed a frame at a time."""
    if times.equals(pd.DatetimeIndex(obs["time"].values)):
        return obs.copy(deep=False).load()
    window = obs.sel(time=times)
    for name in data_variables(window):
        if window[name].chunks is not None:  # dask would stack the computed frames on a copy of them all
            values = np.empty(window[name].shape, window[name].dtype)
            for k in range(len(values)):
                values[k] = window[name][k].values
            window[name] = window[name].copy(data=values)
    return window.load()


def load_model(run_dir_or_ckpt: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, Transform, dict[str, Any]]:
    """Rebuild the network of a run folder (``best.pt``, else ``last.pt``) or checkpoint file.

    Returns:
        ``(model, transform, meta)``: the network in eval mode on ``device``;
        the transform it was trained with; ``meta`` with ``preset``,
        ``checkpoint`` (path), ``checkpoint_hash`` (SHA-256), ``epoch``,
        ``data`` (variable, time step, channels, patch) and ``config``.
    """
    from nowcast import models

    path, state = load_run(run_dir_or_ckpt, map_location=device)
    spec = state["model"]
    try:
        model = models.build(spec["name"], **spec["config"])
        model.load_state_dict(state["model"]["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its model {spec.get('name')!r}, configuration and weights do not agree "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    model.to(device).eval()
    meta = {"preset": spec["name"], "checkpoint": str(path), "checkpoint_hash": file_hash(path),
            "epoch": state["epoch"], "data": dict(state["data"]), "config": dict(state["config"])}
    return model, from_dict(state["transform"]), meta


class PlannedModel:
    """A run folder or checkpoint known by its metadata (:func:`nowcast.checkpoint.read_metadata`);
    :meth:`load` reads the weights on first use."""

    def __init__(self, run_dir_or_ckpt: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.source, self.device = Path(run_dir_or_ckpt), device
        self.checkpoint, self.meta = read_metadata(run_dir_or_ckpt)
        self._bundle: tuple[nn.Module, Transform, dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        """The preset (or family) name the checkpoint records."""
        return str(self.meta["model"].get("name"))

    @property
    def t_in(self) -> int:
        return int(self.meta["model"].get("config", {}).get("t_in") or self.load()[0].t_in)

    @property
    def t_out(self) -> int:
        return int(self.meta["model"].get("config", {}).get("t_out") or self.load()[0].t_out)

    def load(self) -> tuple[nn.Module, Transform, dict[str, Any]]:
        """:func:`load_model`'s bundle, loaded once."""
        if self._bundle is None:
            self._bundle = load_model(self.source, self.device)
        return self._bundle


def _check_compatible(obs: xr.Dataset, meta: dict[str, Any]) -> str:
    variable = data_variables(obs)[0]
    trained = meta.get("data", {})
    if trained.get("variable", variable) != variable:
        raise ValueError(f"{meta.get('checkpoint')}: the model was trained on '{trained['variable']}', "
                         f"the observations hold '{variable}'")
    if "time_step" in trained and pd.Timedelta(trained["time_step"]) != time_step(obs):
        raise ValueError(f"{meta.get('checkpoint')}: the model was trained on frames every "
                         f"{_minutes(pd.Timedelta(trained['time_step']))}, the observations come every "
                         f"{_minutes(time_step(obs))}")
    return variable


def forecast(
    obs: xr.Dataset,
    model_or_run_dir: str | os.PathLike | tuple[nn.Module, Transform, dict[str, Any]],
    *,
    at: Any = None,
    n_leads: int | None = None,
    device: str | torch.device = "cpu",
    tile: int | None = None,
    overlap: int | None = None,
    scratch: str | os.PathLike | None = None,
) -> xr.Dataset:
    """A deterministic forecast issued at ``at`` (default: the last observation time).

    Args:
        obs: observations in the data model (e.g. an opened archive; only the
            input frames are read).
        model_or_run_dir: run folder, checkpoint file, or :func:`load_model`'s tuple.
        at: requested issue time; the forecast is issued from the last time
            step at or before it (:func:`issue_time`), whose ``T_in`` frames
            must all be present.
        n_leads: number of lead times (default: the model's ``t_out``; longer
            horizons are rolled out by the model).
        tile: run on ``tile`` × ``tile`` patches. Default: the training patch
            size when the model was trained on patches smaller than this
            domain (a network whose receptive field exceeds its training
            patch learned the patch border and misbehaves on larger inputs),
            else the whole domain up to :data:`MAX_WHOLE_CELLS` cells.
        overlap: cells shared by neighbouring tiles (default ``tile // 4``).
        scratch: a folder for the leads of a tiled forecast in the Eulerian
            frame larger than :data:`SCRATCH_BYTES`: its input frames are
            copied there a frame at a time and read back a band of rows at a
            time (:class:`RowsOnDisk`), the leads are written there a band of
            rows at a time and the forecast reads them back a lead at a time
            (dask), so neither is ever all in memory; the leads' file must
            outlive the forecast's use.

    Returns:
        forecast dataset (``source`` = preset name, attrs ``checkpoint_hash``,
        ``checkpoint`` and ``frame``), lead ``k`` valid at ``at + k · time_step``;
        NaN where any input frame is NaN (no coverage), or, in the Lagrangian
        frame, where the Lagrangian extrapolation has NaN; in the anomaly
        frame where the leads' climatology has no history (``obs`` must reach
        :data:`nowcast.anomaly.WEEKS` weeks back).

    Raises:
        MissingInputError: when input frames are missing (names them).
    """
    validate(obs, forecast=False)
    if isinstance(model_or_run_dir, tuple):
        model, transform, meta = model_or_run_dir
    else:
        model, transform, meta = load_model(model_or_run_dir, device)
    variable = _check_compatible(obs, meta)
    n_leads = int(n_leads or model.t_out)
    window = select_inputs(obs, model.t_in, at)
    data = window[variable]
    shape = data.shape if data.ndim == 4 else (data.shape[0], 1) + data.shape[1:]
    trained_patch = meta.get("data", {}).get("patch")
    if tile is None and trained_patch and max(trained_patch) < max(shape[-2:]):
        tile = max(trained_patch)
    elif tile is None and shape[-2] * shape[-1] > MAX_WHOLE_CELLS:
        tile = 256
    frame = getattr(model, "frame", "eulerian")
    lagrangian.check_frame(frame, variable)
    reference = pd.Timestamp(window["time"].values[-1])
    options = dict(device=device, tile=tile, overlap=overlap)
    streamed = tile is not None and frame == "eulerian" and 4 * n_leads * math.prod(shape[1:]) > SCRATCH_BYTES
    if scratch is not None and streamed:
        inputs = RowsOnDisk(data, shape, scratch)
        try:
            fields = _leads_on_disk(predict_rows(model, transform, inputs, n_leads, **options),
                                    (n_leads,) + shape[1:], scratch)
        finally:
            os.remove(inputs.path)
    else:
        frames = np.asarray(data.values, dtype="f4").reshape(shape)
        if frame == "anomaly":
            valid = reference + np.arange(1, n_leads + 1) * time_step(obs)
            fields = anomaly.predict(model, transform, frames, anomaly.climatology_of(obs, window["time"].values),
                                     anomaly.climatology_of(obs, valid), **options)
        else:
            fields = (lagrangian.predict if frame == "lagrangian" else predict)(model, transform, frames, n_leads,
                                                                               **options)
    fields = fields if variable == "crowd_flow" else fields[:, 0]
    log.info("%s forecast issued at %s: %d leads", meta.get("preset"), reference, n_leads)
    attrs = {"checkpoint_hash": meta.get("checkpoint_hash", ""), "checkpoint": meta.get("checkpoint", ""),
             "frame": frame}
    return make_forecast(fields, like=obs, reference_time=reference, variable=variable,
                         source=str(meta.get("preset") or model.preset or model.family), attrs=attrs)


def predict(model: nn.Module, transform: Transform, frames: np.ndarray, n_leads: int, *,
            device: str | torch.device = "cpu", tile: int | None = None, overlap: int | None = None) -> np.ndarray:
    """Physical ``[T_in, C, H, W]`` → physical ``[n_leads, C, H, W]`` (float32) through ``model``.

    The scaled input is edge-padded only up to the model's ``size_multiple``
    (:func:`nowcast.models.run_padded`, as in training); with ``tile`` set the
    model runs on overlapping tiles whose outputs are averaged with weights
    that taper linearly over the overlap (no seams). Cells that are NaN (no
    coverage) in any input frame are NaN in every lead: the network saw a
    made-up 0 there, so its output is no forecast. The leads are filled a band
    of rows at a time (:func:`predict_rows`).
    """
    _, channels, height, width = frames.shape
    fields = np.empty((n_leads, channels, height, width), dtype="f4")
    for rows, block in predict_rows(model, transform, frames, n_leads, device=device, tile=tile, overlap=overlap):
        fields[:, :, rows] = block
    return fields


def predict_rows(model: nn.Module, transform: Transform, frames: np.ndarray | RowsOnDisk, n_leads: int, *,
                 device: str | torch.device = "cpu", tile: int | None = None, overlap: int | None = None
                 ) -> Iterator[tuple[slice, np.ndarray]]:
    """:func:`predict`'s leads as ``(rows, [n_leads, C, len(rows), W])`` blocks, top to bottom.

    Tiled, a band of rows is yielded as soon as no later tile overlaps it, so
    the blended sums in memory span about two tiles' rows, not the domain;
    ``frames`` may be a :class:`RowsOnDisk`, read a band of rows at a time.
    """
    import torch

    from nowcast import models

    _, channels, height, width = frames.shape
    read = frames.rows if isinstance(frames, RowsOnDisk) else (lambda first, stop: frames[:, :, first:stop])
    multiple = model.size_multiple
    model.eval()
    if tile is None:
        x = torch.from_numpy(transform.forward(read(0, height)))[None].to(device)
        with torch.no_grad():
            blocks: Iterable[tuple[int, torch.Tensor]] = [(0, models.run_padded(model, x, multiple, n_leads)[0])]
    else:
        padded = (channels, -(-height // multiple) * multiple, -(-width // multiple) * multiple)

        def scaled(first: int, stop: int) -> torch.Tensor:
            """Rows ``first .. stop`` of the scaled input edge-padded as :func:`nowcast.models.pad_to_multiple`
            pads it: ``[1, T, C, rows, W']``."""
            index = np.minimum(np.arange(first, stop), height - 1)
            rows = read(int(index[0]), int(index[-1]) + 1)[:, :, index - index[0]]
            rows = rows[..., np.minimum(np.arange(padded[2]), width - 1)] if padded[2] > width else rows
            return torch.from_numpy(transform.forward(rows))[None].to(device)

        blocks = _tiled_rows(model, scaled, padded, n_leads, tile, overlap, multiple)
    for start, y in blocks:
        rows = slice(start, min(start + y.shape[-2], height))
        if rows.stop > rows.start:
            fields = transform.inverse(y[..., :rows.stop - start, :width].float().cpu().numpy())
            fields[:, np.isnan(read(rows.start, rows.stop)).any(axis=0)] = np.nan
            yield rows, fields


def _tiled_rows(model: nn.Module, scaled: Callable[[int, int], torch.Tensor], shape: tuple[int, int, int],
                n_leads: int, tile: int, overlap: int | None, multiple: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``model`` on overlapping tiles (``tile`` rounded up to ``multiple``) of an input of ``shape``
    ``(C, H, W)`` whose rows ``scaled(first, stop)`` gives as ``[1, T, C, rows, W]``, :data:`TILE_BATCH`
    tiles at a time in row order, and blend them: ``(first row, [n_leads, C, rows, W])`` blocks, each
    yielded once no later tile reaches its rows. Input rows are scaled once per row of tiles."""
    import torch

    from nowcast.windows import tile_origins

    c, h, w = shape
    tile = int(math.ceil(tile / multiple) * multiple)
    th, tw = min(tile, h), min(tile, w)
    overlap = tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap {overlap} must be >= 0 and smaller than the tile ({th} x {tw})")
    origins = [(y0, x0) for y0 in tile_origins(h, th, th - overlap) for x0 in tile_origins(w, tw, tw - overlap)]
    weight = torch.outer(_taper(th, overlap), _taper(tw, overlap))
    inputs: dict[int, torch.Tensor] = {}  # the scaled rows of each row of tiles under way
    first = 0  # the sums below hold rows first .. first + len
    total = norm = None
    for i in range(0, len(origins), TILE_BATCH):
        batch = origins[i:i + TILE_BATCH]
        for y0 in sorted({y0 for y0, _ in batch} - inputs.keys()):
            inputs[y0] = scaled(y0, y0 + th)
        if total is None:
            x = inputs[0]
            weight = weight.to(x.device)
            total, norm = x.new_zeros((n_leads, c, 0, w)), x.new_zeros((0, w))
        grow = batch[-1][0] + th - first - norm.shape[0]
        if grow > 0:
            total = torch.cat([total, total.new_zeros((n_leads, c, grow, w))], dim=-2)
            norm = torch.cat([norm, norm.new_zeros((grow, w))])
        with torch.no_grad():  # not around the yield below: the caller keeps its own grad mode
            tiles = torch.cat([inputs[y0][..., x0:x0 + tw] for y0, x0 in batch])
            out = model(tiles, t_out=n_leads).float()
            for (y0, x0), y in zip(batch, out):
                total[..., y0 - first:y0 - first + th, x0:x0 + tw] += y * weight
                norm[y0 - first:y0 - first + th, x0:x0 + tw] += weight
        done = origins[i + TILE_BATCH][0] if i + TILE_BATCH < len(origins) else h
        for y0 in [y0 for y0 in inputs if y0 < done]:
            del inputs[y0]
        if done > first:
            yield first, total[..., :done - first, :] / norm[:done - first]
            total, norm, first = total[..., done - first:, :], norm[done - first:], done
    log.debug("blended %d tiles of %d x %d (overlap %d)", len(origins), th, tw, overlap)


class RowsOnDisk:
    """Input frames ``[T, C, H, W]`` (float32) copied into a file in ``folder`` a frame at a time, for
    :func:`predict_rows` to read a band of rows at a time: a continental window (OPERA: 8 frames,
    134 MB) is never all in memory. The archive stores whole frames per chunk, so it cannot serve
    bands itself without decompressing every frame per band. Remove :attr:`path` when done."""

    def __init__(self, data: xr.DataArray, shape: tuple[int, int, int, int], folder: str | os.PathLike) -> None:
        self.shape = shape
        handle, self.path = tempfile.mkstemp(prefix="inputs-", suffix=".f4", dir=folder)
        with os.fdopen(handle, "wb") as f:
            for t in range(shape[0]):
                f.write(np.ascontiguousarray(data[t].values, dtype="f4").tobytes())

    def rows(self, first: int, stop: int) -> np.ndarray:
        """Rows ``first .. stop`` of every frame and channel: ``[T, C, stop - first, W]`` (a copy; the
        file's mapping, and with it the pages read, goes when the call returns)."""
        return np.array(np.memmap(self.path, dtype="f4", mode="r", shape=self.shape)[:, :, first:stop])


def _leads_on_disk(blocks: Iterable[tuple[slice, np.ndarray]], shape: tuple[int, ...], folder: str | os.PathLike):
    """:func:`predict_rows`' blocks written into a float32 file in ``folder``, lead after lead, and read back
    as a dask array ``shape`` ``(n_leads, C, H, W)`` chunked one lead at a time."""
    import dask
    import dask.array as da

    n_leads, channels, height, width = shape
    handle, name = tempfile.mkstemp(suffix=".f4", dir=folder)
    with os.fdopen(handle, "wb") as f:
        f.truncate(4 * n_leads * channels * height * width)
        for rows, block in blocks:
            for lead, channel in np.ndindex(n_leads, channels):
                f.seek(4 * ((lead * channels + channel) * height + rows.start) * width)
                f.write(block[lead, channel])
    read = dask.delayed(_read_lead, pure=True)
    return da.stack([da.from_delayed(read(name, lead, shape[1:]), shape[1:], np.float32) for lead in range(n_leads)])


def _read_lead(path: str, lead: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.fromfile(path, dtype="f4", count=count, offset=4 * lead * count).reshape(shape)


def _taper(n: int, overlap: int) -> torch.Tensor:
    """1-D blending weights: rising linearly over ``overlap`` cells at each end, 1 inside, never 0."""
    import torch

    ramp = torch.ones(n)
    if overlap:
        edge = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        ramp[:overlap] = edge
        ramp[n - overlap:] = torch.minimum(ramp[n - overlap:], edge.flip(0))
    return ramp


#: Input frames each baseline needs at the issue time (Lagrangian extrapolation: optical flow of three).
BASELINE_FRAMES = {"persistence": 1, "lagrangian": 3, "historical_average": 1}
#: Lead times issued when no model sets them: an hour of 5-min frames.
DEFAULT_LEADS = 12

if TYPE_CHECKING:
    Model = str | os.PathLike | tuple[nn.Module, Transform, dict[str, Any]] | PlannedModel


def input_window(obs: xr.Dataset, reference: Any, n_frames: int) -> xr.Dataset:
    """The frames of ``obs`` among the ``n_frames`` ending at ``reference``: loaded (read once for every
    method) up to :data:`SCRATCH_BYTES`, else as lazy as ``obs``, so that a continental window is never
    all in memory (each method reads the frames it needs; tiled models a band of rows at a time)."""
    wanted = input_times(reference, n_frames, time_step(obs))
    present = wanted[wanted.isin(pd.DatetimeIndex(obs["time"].values))]
    if sum(obs[name].dtype.itemsize * obs[name].size // obs.sizes["time"] for name in data_variables(obs)) \
            * len(present) > SCRATCH_BYTES:
        return obs.sel(time=present)
    return _frames_at(obs, present)


def forecast_with_baselines(
    obs: xr.Dataset,
    models: Sequence[Model],
    *,
    at: Any = None,
    n_leads: int,
    device: str | torch.device = "cpu",
    include_baselines: bool = True,
    skipped: dict[str, str] | None = None,
    scratch: str | os.PathLike | None = None,
) -> dict[str, xr.Dataset]:
    """Forecasts of every model plus the baselines, all issued at :func:`issue_time` of ``at``.

    Keys: each model's preset name (its run folder's name when two share a
    preset), then, unless ``include_baselines`` is False, ``persistence`` and
    ``lagrangian`` (rain) or ``historical_average`` (crowd flow, when ``obs``
    reaches back far enough).

    Args:
        models: run folders, checkpoint files, :class:`PlannedModel` or :func:`load_model` bundles; a
            network is loaded only when its input frames are complete.
        skipped: when given, a method whose input frames are incomplete is
            left out and recorded here (name → reason) while the others are
            still issued; otherwise :class:`MissingInputError` propagates.
        scratch: where tiled model forecasts keep their leads (:func:`forecast`).
    """
    reference = issue_time(obs["time"].values, at, time_step(obs))
    models = [m if isinstance(m, (tuple, PlannedModel)) else PlannedModel(m, device) for m in models]
    t_ins = [m.t_in if isinstance(m, PlannedModel) else m[0].t_in for m in models]
    window = input_window(obs, reference, max(t_ins + [BASELINE_FRAMES["lagrangian"]]))
    out: dict[str, xr.Dataset] = {}

    def missing(name: str, err: MissingInputError, t_in: int) -> None:
        if skipped is None:
            raise err
        newest = newest_complete_window(obs["time"].values, t_in, time_step(obs))
        skipped[name] = f"{err}" + (f" (the newest complete window ends at {newest:%Y-%m-%d %H:%M})"
                                    if newest is not None else " (the archive holds no complete window)")

    for model, t_in in zip(models, t_ins):
        if isinstance(model, PlannedModel):
            name, checkpoint = model.name, model.checkpoint
        else:
            name, checkpoint = model[2].get("preset") or model[0].preset, model[2].get("checkpoint")
        if name in out or name in (skipped or {}):
            name = Path(checkpoint).parent.name
        try:
            select_inputs(window, t_in, reference)
            bundle = model.load() if isinstance(model, PlannedModel) else model
            out[name] = forecast(window, bundle, at=reference, n_leads=n_leads, device=device, scratch=scratch)
        except MissingInputError as err:
            missing(name, err, t_in)
    if not include_baselines:
        return out
    rain = data_variables(obs)[0] in baselines.RAIN_VARIABLES
    methods = {"persistence": baselines.persistence}
    methods.update({"lagrangian": baselines.lagrangian_extrapolation} if rain
                   else {"historical_average": baselines.historical_average})
    for name, method in methods.items():
        try:
            select_inputs(window, BASELINE_FRAMES[name], reference)
            out[name] = method(obs if name == "historical_average" else window, n_leads, at=reference)
        except MissingInputError as err:
            missing(name, err, BASELINE_FRAMES[name])
        except ValueError as err:  # the historical average without enough history
            log.warning("no %s baseline: %s", name, err)
            if skipped is not None:
                skipped[name] = str(err)
    return out


FORMATS = ("netcdf", "geotiff", "webmap")
DEFAULT_FORMATS = ("netcdf", "geotiff")


def issue_folder_name(reference_time: Any) -> str:
    """Folder name of the products issued at ``reference_time``, e.g. ``20240601T1430Z``."""
    return pd.Timestamp(reference_time).strftime("%Y%m%dT%H%MZ")


def write_products(forecasts: dict[str, xr.Dataset], out_dir: str | os.PathLike, *,
                   formats: Sequence[str] = DEFAULT_FORMATS, overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write every forecast (CF-NetCDF, GeoTIFFs, web-map images) into one folder, all or nothing.

    Files go to a hidden temporary sibling of ``out_dir`` that is renamed onto
    ``out_dir`` only when every file is written, so a failure leaves no partial
    product. Layout: ``<method>.nc``, ``geotiff/<method>/*.tif`` (one per
    lead), ``webmap/<method>/`` (:func:`nowcast.products.write_webmap_images`)
    and ``manifest.json`` (issue time, files and checkpoint hash per method, plus ``extra``).

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    from nowcast.products import write_cf_netcdf, write_geotiffs, write_webmap_images

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown product formats {sorted(unknown)}; choose from {list(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: products already exist (overwrite them with --overwrite)")
    remove_stale(out_dir.parent)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{scratch_tag()}")
    manifest: dict[str, Any] = {"methods": {}, **(extra or {})}
    try:
        tmp.mkdir(parents=True)
        for name, fc in forecasts.items():
            entry = {"source": fc.attrs.get("source", name), "checkpoint_hash": fc.attrs.get("checkpoint_hash"),
                     "reference_time": str(pd.Timestamp(fc["forecast_reference_time"].values))}
            if "netcdf" in formats:
                write_cf_netcdf(fc, tmp / f"{name}.nc", checkpoint_hash=fc.attrs.get("checkpoint_hash"))
                entry["netcdf"] = f"{name}.nc"
            if "geotiff" in formats:
                tiffs = write_geotiffs(fc, tmp / "geotiff" / name)
                entry["geotiffs"] = [str(p.relative_to(tmp)) for p in tiffs]
            if "webmap" in formats:
                images = write_webmap_images(fc, tmp / "webmap" / name)
                entry["webmap"] = [str(p.relative_to(tmp)) for p in images]
            manifest["methods"][name] = entry
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{scratch_tag()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d forecasts to %s", len(forecasts), out_dir)
    return out_dir


def _skipped_before(folder: Path) -> list[str]:
    """Methods an earlier run left out of the products in ``folder`` (its manifest's ``skipped``)."""
    try:
        return sorted(json.loads((folder / "manifest.json").read_text()).get("skipped") or {})
    except (OSError, ValueError):
        return []


@dataclass
class Issue:
    """One issue time of :func:`issue_nowcasts`: the methods written, those skipped and why."""

    reference_time: pd.Timestamp
    folder: Path
    methods: list[str]
    skipped: dict[str, str]
    reason: str | None = None  # why nothing was issued

    @property
    def issued(self) -> bool:
        return self.reason is None


def issue_times(times: Sequence, step: pd.Timedelta, *, at: Sequence = (), start: Any = None, end: Any = None,
                every: Any = None) -> list[pd.Timestamp]:
    """The issue times asked for, each snapped by :func:`issue_time`, sorted, without repeats.

    ``at`` lists times; ``start`` .. ``end`` (inclusive; ``end`` defaults to
    the newest frame, ``start`` to ``end``) adds one every ``every`` (default:
    the archive's time step). Nothing asked: the newest archived frame.
    """
    requested = list(at)
    if start is not None or end is not None:
        last = pd.Timestamp(end) if end is not None else pd.Timestamp(times[-1])
        first = pd.Timestamp(start) if start is not None else last
        every = pd.Timedelta(every) if every is not None else step
        if every <= pd.Timedelta(0):
            raise ValueError(f"--every must be a positive duration, got {every}")
        requested += list(pd.date_range(first, last, freq=every))
    return sorted({issue_time(times, t, step) for t in requested or [None]})


def issue_nowcasts(store: str | os.PathLike, models: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   at: Sequence = (), start: Any = None, end: Any = None, every: Any = None,
                   n_leads: int | None = None, include_baselines: bool = True,
                   formats: Sequence[str] = DEFAULT_FORMATS, device: str | torch.device = "cpu",
                   overwrite: bool = False, extra: dict[str, Any] | None = None) -> list[Issue]:
    """Issue nowcasts at every requested time (:func:`issue_times`) into ``out_dir/<issue time>/``.

    The archive is opened once (its lat/lon read once); the models are
    planned from their checkpoints' metadata and each network is loaded once,
    when its first forecast is computed; large tiled forecasts keep their
    leads in a hidden scratch folder in ``out_dir`` until their products are
    written (:func:`forecast`'s ``scratch``). Per issue time, a
    method whose input window is incomplete is skipped and named (the others,
    e.g. the baselines with their shorter windows, are still issued); the
    time is skipped when no method can be issued or its folder already exists
    (unless ``overwrite``), except a folder whose manifest names skipped
    methods that can now be issued (a late frame filled their window): it is
    replaced with every method. Without models, the baselines are issued for
    ``n_leads`` (default :data:`DEFAULT_LEADS`) lead times.
    """
    from nowcast.archive import open_archive

    check_writable(out_dir)  # before loading and computing anything
    obs = open_archive(store, chunks=None)  # lazily indexed: a window reads its frames' chunks only
    obs = obs.assign_coords({name: _float32_rows(obs[name]) for name in ("lat", "lon")})
    planned = [PlannedModel(model, device) for model in models]
    n_leads = int(n_leads or max((m.t_out for m in planned), default=DEFAULT_LEADS))
    issues = []
    for reference in issue_times(obs["time"].values, time_step(obs), at=at, start=start, end=end, every=every):
        folder = Path(out_dir) / issue_folder_name(reference)
        missing_before = _skipped_before(folder) if folder.exists() and not overwrite else None
        if missing_before is not None and not missing_before:
            issues.append(Issue(reference, folder, [], {}, f"products issued at {reference:%Y-%m-%d %H:%M} "
                                                           f"already exist in {folder}"))
            continue
        with tempfile.TemporaryDirectory(prefix=".scratch-", suffix=f"-{scratch_tag()}", dir=out_dir) as scratch:
            issues.append(_issue(obs, planned, reference, folder, missing_before, scratch, store=store,
                                 n_leads=n_leads, include_baselines=include_baselines, formats=formats,
                                 device=device, overwrite=overwrite, extra=extra))
    return issues


def _float32_rows(coord: xr.DataArray) -> xr.DataArray:
    """A lazily opened 2-D coordinate read once as float32 (what the products store), a stored chunk's rows at a
    time: a continental grid's float64 lat/lon pair is 67 MB, read whole it peaked at 108 MB more."""
    values = np.empty(coord.shape, dtype="f4")
    rows = coord.encoding.get("chunks", coord.shape)[0]
    for start in range(0, coord.shape[0], rows):
        values[start:start + rows] = coord[start:start + rows].values
    return coord.copy(data=values)


def _issue(obs: xr.Dataset, planned: list[PlannedModel], reference: pd.Timestamp, folder: Path,
           missing_before: list[str] | None, scratch: str, *, store: str | os.PathLike, n_leads: int,
           include_baselines: bool, formats: Sequence[str], device: str | torch.device, overwrite: bool,
           extra: dict[str, Any] | None) -> Issue:
    """One issue time of :func:`issue_nowcasts`, tiled model leads kept in ``scratch`` until written."""
    skipped: dict[str, str] = {}
    forecasts = forecast_with_baselines(obs, planned, at=reference, n_leads=n_leads, device=device,
                                        include_baselines=include_baselines, skipped=skipped, scratch=scratch)
    if missing_before and not set(missing_before) & set(forecasts):
        return Issue(reference, folder, [], skipped, f"products issued at {reference:%Y-%m-%d %H:%M} "
                     f"exist in {folder}; {', '.join(missing_before)} still cannot be issued")
    if not forecasts:
        return Issue(reference, folder, [], skipped, f"{store}: " + "; ".join(
            f"{name}: {why}" for name, why in skipped.items()) if skipped else "no method to issue")
    # A folder whose methods were skipped (a late frame has since filled the window) is replaced whole.
    write_products(forecasts, folder, formats=formats, overwrite=overwrite or bool(missing_before),
                   extra={**(extra or {}), "reference_time": str(reference), "skipped": skipped})
    for name, why in skipped.items():
        log.warning("%s not issued at %s: %s", name, reference, why)
    return Issue(reference, folder, list(forecasts), skipped)
