"""Training loop: paper optimisers, schedules and losses; AMP, DDP and resumable checkpoints.

:func:`train` fits one model preset on an archive (or an in-memory data-model
dataset) and writes a run folder::

    RUN_DIR/config.json    the resolved training configuration
    RUN_DIR/last.pt        checkpoint after every epoch and every ``checkpoint_every`` steps
                           (``resume=True`` continues from it)
    RUN_DIR/best.pt        checkpoint with the lowest validation loss (used for forecasting)
    RUN_DIR/*.meta.json    each checkpoint's metadata, read to plan forecasts without the weights
    RUN_DIR/metrics.csv    one row per epoch (also metrics.json; TensorBoard optional)

With ``frame="lagrangian"`` the model learns in the Lagrangian frame
(:mod:`nowcast.lagrangian`), from windows advected once into a cache; with
``frame="anomaly"`` crowd flows are learnt as departures from their weekly
cycle (:mod:`nowcast.anomaly`).

Runs are reproducible: the model is initialised from ``seed``, the sample
order of epoch ``e`` depends only on ``(seed, e)``, and every random state is
saved with each checkpoint (with the epoch's progress when taken mid-epoch),
so a killed or time-budgeted run resumed from ``last.pt`` reaches exactly the
losses of an uninterrupted one (bit for bit on CPU).
Under ``torchrun`` the same call trains with DistributedDataParallel (gloo on
CPU, NCCL on CUDA) and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
import xarray as xr
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler

from nowcast import anomaly, lagrangian, models
from nowcast.checkpoint import (BEST, LAST, find_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                set_rng_state)
from nowcast.products.atomic import atomic_path, write_text_atomic
from nowcast.transforms import from_dict
from nowcast.windows import EACH_EVENT, Splits, WindowDataset, event_ids, open_frames, split_datasets

log = logging.getLogger(__name__)

#: Used for a bare family name (``"tau"``), which has no paper recipe of its own.
FALLBACK_DEFAULTS = models.TrainingDefaults("adam", 1e-3, "onecycle", 8, 10)
#: OpenSTL's cosine schedule (timm's CosineLRScheduler): warm-up start and floor of the learning rate.
WARMUP_LR, MIN_LR = 1e-5, 1e-6


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in every checkpoint)."""

    preset: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    schedule: str
    warmup_epochs: int
    scheduled_sampling: bool
    t_in: int
    t_out: int
    steps_per_epoch: int | None = None
    patch: list[int] | None = None
    min_wet_fraction: float = 0.0
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    block: str | None = None
    transform: str | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None
    input_phase_loss: bool = False
    loss: str = "paper"
    quantile: float | None = None
    ema: float | None = None
    patience: int | None = 10
    val_samples: int | None = 512
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    frame: str = "eulerian"
    frame_cache: str | None = None
    augment: str = "none"
    lagrangian_loss: str = "advected"  # what checkpoints written before the option trained with; train()'s is observed


#: Training-sample augmentations: ``none`` (the papers') or ``dihedral`` (:func:`dihedral`).
AUGMENTATIONS = ("none", "dihedral")


def dihedral_points(origin: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`dihedral` of a field of cell coordinates ``[..., 2, h, w]`` (row, column): moved as a field
    and its values mapped the same way, so a point keeps pointing at the same (moved) cell."""
    h, w = origin.shape[-2:]
    origin = dihedral(origin, k)
    if k & 4:
        origin = origin.flip(-3)  # rows become columns
    row, col = origin.unbind(-3)
    return torch.stack([(h - 1) - row if k & 2 else row, (w - 1) - col if k & 1 else col], dim=-3)


def dihedral(frames: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0-7) of the square on the last two (y, x) dims: bit 0 flips x, bit 1 flips y,
    bit 2 transposes first (square frames only). 0-3 are the flips and the half turn, 4-7 add the
    quarter turns and the diagonal mirrors: the 8 elements of the dihedral group D4."""
    if k & 4:
        frames = frames.transpose(-1, -2)
    dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
    return frames.flip(dims) if dims else frames


@dataclass
class TrainResult:
    """A finished (or early-stopped) run."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    stopped_early: bool = False
    stopped_by_budget: bool = False


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float, device: torch.device) -> list[float]:
        """Sum scalars over ranks (identity without DDP)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        return t.tolist()


class EpochSampler(Sampler[int]):
    """Shuffled sample indices that depend only on ``(seed, epoch)``: ``per_rank`` of them for this rank.

    Unlike ``DistributedSampler`` it can draw more (or fewer) samples than one
    pass over the data (``steps_per_epoch``); passes are concatenated
    permutations, and rank ``r`` takes every ``world``-th index from ``r``.
    """

    def __init__(self, n: int, per_rank: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.per_rank, self.seed, self.rank, self.world = n, per_rank, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw ``epoch``'s order, leaving out its first ``skip`` indices (done before a step checkpoint)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.per_rank * self.world
        passes = [torch.randperm(self.n, generator=g) for _ in range(math.ceil(total / self.n))]
        return iter(torch.cat(passes)[:total][self.rank::self.world][self.skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.skip


def training_defaults(preset: str) -> models.TrainingDefaults:
    """The paper's optimiser, learning rate, schedule, batch size and epochs for ``preset``."""
    if preset in models.PRESETS and models.PRESETS[preset].training is not None:
        return models.PRESETS[preset].training
    models.family_of(preset)  # raises KeyError for unknown names
    return FALLBACK_DEFAULTS


def train(
    archive_or_dataset: str | os.PathLike | xr.Dataset,
    preset: str,
    out_dir: str | os.PathLike,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    t_in: int | None = None,
    t_out: int | None = None,
    patch: int | tuple[int, int] | None = None,
    device: str = "auto",
    amp: str = "auto",
    compile: bool = False,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    optimizer: str | None = None,
    schedule: str | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    input_phase_loss: bool | None = None,
    loss: str = "paper",
    quantile: float | None = None,
    ema: float | None = None,
    patience: int | None = 10,
    val_samples: int | None = 512,
    min_wet_fraction: float = 0.0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    block: str | None = None,
    transform: str | None = None,
    num_workers: int = 0,
    tensorboard: bool = False,
    frame: str | None = None,
    frame_cache: str | os.PathLike | None = None,
    augment: str = "none",
    lagrangian_loss: str = "observed",
    time_budget: float | None = None,
    checkpoint_every: int | None = None,
    **model_overrides: Any,
) -> TrainResult:
    """Train ``preset`` on an archive path or data-model dataset; write checkpoints to ``out_dir``.

    Unset options take the preset's paper defaults (:func:`training_defaults`):
    Adam/AdamW, OneCycle (per step) or OpenSTL's cosine with warm-up (per
    epoch, :func:`cosine_lr`), batch size and epochs, no gradient clipping;
    the loss is :func:`nowcast.models.paper_loss` (MS-LSTM adds linear
    scheduled sampling and, like its reference code, covers the input phase's
    one-step outputs too). ``t_in``/``t_out`` default to the preset's,
    ``in_channels`` always follows the data, and other keyword arguments
    override model hyper-parameters.

    Args:
        steps_per_epoch: batches per epoch (default: one pass over the training split).
        patch: training tile size; default the preset's frame size when the
            domain is larger, else the whole domain.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amp: ``"auto"`` (bf16 on CUDA, off on CPU), ``"bf16"``, ``"fp16"`` or ``"off"``.
        compile: wrap the model in ``torch.compile``.
        grad_clip: clip the gradient norm to this (None: off, as in every reference).
        input_phase_loss: MS-LSTM only: train on all ``T_in - 1 + T_out``
            one-step outputs, the teacher-forced ones of the input phase
            included, as the reference code does (default for MS-LSTM); False
            restricts the loss to the forecast frames. Validation always
            scores the forecast frames.
        loss: ``"paper"`` (default, each family's own), or the deviations
            ``"mse"``, ``"mae"`` and ``"quantile"`` (:data:`nowcast.models.LOSS_NAMES`);
            MAE trains for the median, which scores better in MAE and keeps rain
            edges where MSE blurs them; ``"quantile"`` for the ``quantile``-quantile
            (pinball loss), above the median a larger rain area, as CSI rewards.
        quantile: the quantile in (0, 1) of ``loss="quantile"`` (and only of it).
        ema: keep an exponential moving average of the weights, with this
            decay per step (e.g. 0.999; None: off, as the papers), as OpenSTL's
            EMA hook; validation, ``best.pt`` and so forecasts use the average,
            which damps the step-to-step noise of small-batch training. Its
            horizon, 1 / (1 - ema) steps, must be well below the run's
            length, or the average keeps the untrained weights.
        resume: continue from ``out_dir/last.pt`` (an epoch's or a step's) with its stored configuration.
        time_budget: minutes of wall time for this call: after the step that
            passes it the run validates, keeps the model as ``best.pt`` if it
            is the best so far, writes ``last.pt`` and returns
            (``stopped_by_budget``); ``resume`` continues it. The schedule
            still spans ``epochs``, so choose epochs that roughly fit.
        checkpoint_every: also write ``last.pt`` every this many steps inside
            an epoch, so a killed run loses at most that many steps.
        patience: stop after this many epochs without a lower validation loss (None: never).
        val_samples: validate on at most this many samples, evenly spaced over
            the validation split and the same every epoch (None: all of them).
        fractions, block: time-block split (see :func:`nowcast.windows.split_windows`;
            ``block="event"`` deals whole gapless runs to the splits, ``"each-event"``
            cuts each run chronologically so every event trains and validates). A
            validation share that holds no window raises ValueError naming
            what to pass instead; ``fractions=(1, 0, 0)`` trains without one.
        transform: scaler kind (default by variable, :data:`nowcast.transforms.DEFAULT_KIND`:
            dBR for rain rate, log1p up to the training split's 99.9 % quantile for crowd flow).
        frame: ``"eulerian"`` (default, the papers'), ``"lagrangian"`` (rain only:
            :mod:`nowcast.lagrangian`) or ``"anomaly"`` (crowd flows only:
            :mod:`nowcast.anomaly`); stored in the checkpoint, so forecasts apply it.
        frame_cache: folder of the Lagrangian-frame window cache (default
            :func:`nowcast.lagrangian.default_cache_folder`).
        lagrangian_loss: where a Lagrangian-frame network is scored
            (:data:`nowcast.lagrangian.LOSSES`): ``"observed"`` (default, LUPIN's:
            its outputs advected forward as the forecast advects them,
            differentiably, against the observed targets) or ``"advected"``
            (L-CNN's: against the targets advected back to the issue time,
            blurred by that round trip; MAE 0.258 against 0.219 mm h-1 at +5 min
            in ``bench/results/radar-ablations.md``).
        augment: ``"none"`` (default, as the papers) or ``"dihedral"``: each
            training batch (inputs and targets alike) in one of the 8 symmetries
            of the square drawn at random (flips and the half turn only on
            non-square tiles), an eightfold sample of small radar archives.
            For rain, whose statistics do not depend on direction; not for
            crowd flows, whose city has one orientation.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
    """
    deadline = time.monotonic() + 60 * time_budget if time_budget is not None else None
    run_dir = Path(out_dir)
    dist = _init_distributed(device)
    try:
        dev = _device(device, dist)
        state = _resume_state(run_dir, resume, dev)
        if state is not None:
            cfg = TrainConfig(**state["config"])
            _check_resume_arguments(cfg, epochs=epochs, batch_size=batch_size, lr=lr, t_in=t_in, t_out=t_out,
                                    steps_per_epoch=steps_per_epoch, frame=frame)
        else:
            cfg = _new_config(preset, epochs=epochs, batch_size=batch_size, lr=lr, t_in=t_in, t_out=t_out,
                              steps_per_epoch=steps_per_epoch, patch=patch, amp=amp, seed=seed,
                              optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
                              grad_clip=grad_clip, input_phase_loss=input_phase_loss, loss=loss,
                              quantile=quantile, ema=ema, patience=patience, val_samples=val_samples,
                              min_wet_fraction=min_wet_fraction,
                              fractions=fractions, block=block, transform=transform, num_workers=num_workers,
                              frame=frame or "eulerian", frame_cache=str(frame_cache) if frame_cache else None,
                              augment=augment, lagrangian_loss=lagrangian_loss, model_overrides=model_overrides,
                              source=archive_or_dataset)
        return _Trainer(cfg, archive_or_dataset, run_dir, dev, dist, state, compile=compile,
                        progress=progress and dist.main, tensorboard=tensorboard, deadline=deadline,
                        checkpoint_every=checkpoint_every).run()
    finally:
        if dist.owns_group:
            torch_dist.destroy_process_group()


def _init_distributed(device: str) -> _Dist:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not torch_dist.is_initialized()
    if owns:
        cuda = torch.cuda.is_available() and not device.startswith("cpu")
        torch_dist.init_process_group("nccl" if cuda else "gloo")
    log.info("DDP rank %d of %d (local rank %d)", rank, world, local_rank)
    return _Dist(rank, world, local_rank, owns)


def _device(device: str, dist: _Dist) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = dev if dev.index is not None else torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)  # NCCL collectives run on the current device
    return dev


def _resume_state(run_dir: Path, resume: bool, dev: torch.device) -> dict | None:
    last = run_dir / LAST
    if last.exists():
        if not resume:
            raise FileExistsError(f"{run_dir}: already holds a training run ({LAST}); "
                                  "resume it (--resume) or choose another folder")
        log.info("resuming from %s", last)
        return load_checkpoint(last, map_location=dev)
    if resume:
        log.warning("%s: nothing to resume (no %s yet); starting a new run", run_dir, LAST)
    return None


def _check_resume_arguments(cfg: TrainConfig, **given: Any) -> None:
    clashes = [f"{k}={v} (run has {getattr(cfg, k)})" for k, v in given.items()
               if v is not None and v != getattr(cfg, k)]
    if clashes:
        raise ValueError("resume continues a run with its stored configuration; "
                         f"these arguments differ: {', '.join(clashes)}")


def _new_config(preset: str, *, epochs, batch_size, lr, t_in, t_out, steps_per_epoch, patch, optimizer,
                schedule, fractions, input_phase_loss, model_overrides, source, **rest) -> TrainConfig:
    defaults = training_defaults(preset)
    mslstm = models.family_of(preset) == "mslstm"
    if input_phase_loss and not mslstm:
        raise ValueError(f"input_phase_loss is for MS-LSTM, which steps through its inputs; {preset!r} does not")
    models.check_loss(rest["loss"], rest["quantile"])
    if rest["ema"] is not None and not 0 < rest["ema"] < 1:
        raise ValueError(f"ema is a decay per step in (0, 1), e.g. 0.999; got {rest['ema']}")
    if rest["augment"] not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {rest['augment']!r}; choose one of {list(AUGMENTATIONS)}")
    lagrangian.check_loss(rest["lagrangian_loss"])
    kwargs = models.PRESETS[preset].kwargs if preset in models.PRESETS else {}
    t_in = t_in or kwargs.get("t_in") or model_overrides.get("t_in")
    t_out = t_out or kwargs.get("t_out") or model_overrides.get("t_out")
    if not (t_in and t_out):
        raise ValueError(f"{preset!r} is a model family with no frame counts of its own: pick one of its "
                         f"presets (see `nowcast models`, e.g. {preset}-tiny), or pass t_in and t_out")
    overrides = {k: v for k, v in model_overrides.items() if k not in ("t_in", "t_out", "in_channels")}
    return TrainConfig(
        preset=preset, epochs=epochs or defaults.epochs, batch_size=batch_size or defaults.batch_size,
        lr=defaults.lr if lr is None else lr, optimizer=optimizer or defaults.optimizer,
        schedule=schedule or defaults.schedule,
        warmup_epochs=defaults.warmup_epochs, scheduled_sampling=defaults.scheduled_sampling,
        t_in=int(t_in), t_out=int(t_out), steps_per_epoch=steps_per_epoch,
        patch=_default_patch(preset, patch, source), model_overrides=overrides,
        input_phase_loss=mslstm if input_phase_loss is None else bool(input_phase_loss),
        fractions=[float(f) for f in fractions], **rest)


def _default_patch(preset: str, patch, source) -> list[int] | None:
    if patch is not None:
        return [int(patch), int(patch)] if np.isscalar(patch) else [int(p) for p in patch]
    if preset not in models.PRESETS:
        return None
    data, _ = open_frames(source)
    size = [models.PRESETS[preset].height, models.PRESETS[preset].width]
    return size if data.sizes["y"] > size[0] and data.sizes["x"] > size[1] else None


class _RunLog:
    """The run folder's human-readable side: config.json, metrics.csv/.json and TensorBoard (rank 0)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, tensorboard: bool) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.json", json.dumps(asdict(cfg), indent=1))
        self.writer = _tensorboard(run_dir) if tensorboard else None

    def write(self, history: list[dict[str, float]]) -> None:
        """Rewrite the metrics files with every epoch so far; log the newest row to TensorBoard."""
        with atomic_path(self.run_dir / "metrics.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        finite = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
                  for row in history]  # strict JSON: no NaN (an empty validation split)
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(finite, indent=1))
        if self.writer is not None:
            for key, value in history[-1].items():
                if key not in ("epoch", "step", "samples"):
                    self.writer.add_scalar(key, value, history[-1]["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Trainer:
    """One run: data, model, optimisation state; :meth:`run` trains the remaining epochs.

    ``deadline`` (``time.monotonic()``) ends the run cleanly after the step
    that passes it; ``checkpoint_every`` also writes ``last.pt`` every so many
    steps inside an epoch. A checkpoint taken mid-epoch carries the epoch's
    progress (batches done, loss sums), so resuming it continues the same
    sample order and reaches the same losses as an uninterrupted run.
    """

    def __init__(self, cfg: TrainConfig, source, run_dir: Path, dev: torch.device, dist: _Dist,
                 state: dict | None, *, compile: bool, progress: bool, tensorboard: bool,
                 deadline: float | None = None, checkpoint_every: int | None = None) -> None:
        self.cfg, self.run_dir, self.dev, self.dist, self.progress = cfg, run_dir, dev, dist, progress
        self.deadline, self.checkpoint_every, self.tensorboard = deadline, checkpoint_every, tensorboard
        if state is None:
            _seed_everything(cfg.seed)
        self.data = split_datasets(
            source, cfg.t_in, cfg.t_out, patch=cfg.patch, min_wet_fraction=cfg.min_wet_fraction,
            fractions=cfg.fractions, block=cfg.block, seed=cfg.seed,
            transform=from_dict(state["transform"]) if state else cfg.transform)
        if len(self.data.train) == 0:
            raise ValueError(f"no training samples of {cfg.t_in}+{cfg.t_out} gapless frames in "
                             f"{_describe(source)}")
        if len(self.data.val) == 0:
            if cfg.fractions[1] > 0:
                raise ValueError(_no_validation(cfg, self.data.train))
            log.info("no validation split: early stopping and best.pt follow the training loss")
        lagrangian.check_frame(cfg.frame, str(self.data.train.variable))
        if cfg.frame == "lagrangian":
            lagrangian.attach(self.data, source, cfg.frame_cache or lagrangian.default_cache_folder(source, run_dir),
                              cfg.lagrangian_loss)
        elif cfg.frame == "anomaly":
            anomaly.attach(self.data, source)
        self.model = models.build(cfg.preset, t_in=cfg.t_in, t_out=cfg.t_out, frame=cfg.frame,
                                  in_channels=self.data.train.channels, **cfg.model_overrides)
        self.model.to(dev)
        if dev.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if compile:
            self.net = torch.compile(self.net)
        self.loss_fn = models.training_loss(self.model, cfg.loss, cfg.quantile)
        per_rank_batches = cfg.steps_per_epoch or math.ceil(len(self.data.train) / (cfg.batch_size * dist.world))
        self.steps_per_epoch = per_rank_batches
        self.total_steps = cfg.epochs * per_rank_batches
        self.sampler = EpochSampler(len(self.data.train), per_rank_batches * cfg.batch_size, cfg.seed,
                                    dist.rank, dist.world)
        self.loader = DataLoader(self.data.train, batch_size=cfg.batch_size, sampler=self.sampler,
                                 num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                                 persistent_workers=cfg.num_workers > 0)
        # Evenly spaced, fixed subset: comparable across epochs, and it draws
        # no random numbers (a resumed run stays bit-identical).
        n_val = len(self.data.val)
        chosen = (np.unique(np.linspace(0, n_val - 1, cfg.val_samples).astype(int))
                  if cfg.val_samples and n_val > cfg.val_samples else np.arange(n_val))
        val_indices = [int(i) for i in chosen[dist.rank::dist.world]]
        self.val_loader = DataLoader(torch.utils.data.Subset(self.data.val, val_indices),
                                     batch_size=cfg.batch_size, num_workers=cfg.num_workers)
        self.optimizer = _optimizer(cfg, self.model)
        # torch's own EMA (AveragedModel) of the unwrapped model; identical on every DDP rank.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema else None)
        self.scheduler = _scheduler(cfg, self.optimizer, self.total_steps, per_rank_batches)
        self.amp_dtype = _amp_dtype(cfg.amp, dev)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step, self.history = 0, 0, []
        self.progress_state = _fresh_progress()
        self.best, self.bad_epochs, self.stopped_early, self.out_of_time = math.inf, 0, False, False
        self.pending_rng: dict | None = None
        if state is not None:
            self._restore(state)

    @property
    def evaluated(self) -> nn.Module:
        """The model validated and checkpointed for forecasts: the weights' moving average with ``ema``."""
        return self.model if self.ema is None else self.ema.module

    def _restore(self, state: dict) -> None:
        self.evaluated.load_state_dict(state["model"]["state"])
        if self.ema is not None:
            self.model.load_state_dict(state["ema"]["trained"])
            self.ema.n_averaged.copy_(state["ema"]["n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        stopping = state["early_stopping"]
        self.best, self.bad_epochs = stopping["best"], stopping["bad_epochs"]
        self.stopped_early = stopping["stopped"]
        self.progress_state = dict(state.get("progress", _fresh_progress()))
        if self.progress_state["batch"]:  # saved after the epoch's loader drew its seed: restore after that
            self.pending_rng = state["rng"]
        else:
            set_rng_state(state["rng"])

    def run(self) -> TrainResult:
        self.log = _RunLog(self.run_dir, self.cfg, self.tensorboard) if self.dist.main else None
        log.info("training %s for %d epochs of %d steps (batch %d, %s, %s schedule, lr %g) on %s",
                 self.cfg.preset, self.cfg.epochs, self.steps_per_epoch, self.cfg.batch_size,
                 self.cfg.optimizer, self.cfg.schedule, self.cfg.lr, self.dev)
        while self.epoch < self.cfg.epochs and not (self.stopped_early or self.out_of_time):
            self._epoch()
        if self.log is not None:
            self.log.close()
        if self.dist.world > 1:
            torch_dist.barrier()
        best = find_checkpoint(self.run_dir, (BEST, LAST))
        return TrainResult(self.run_dir, best, self.run_dir / LAST, list(self.history), self.stopped_early,
                           self.out_of_time)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp_dtype)

    def _batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A loader's batch, ``(x, y)`` or ``(x, y, observed, origin)`` (:meth:`WindowDataset.__getitem__`),
        on the device."""
        return tuple(t.to(self.dev, non_blocking=True) for t in tensors)

    def _augmented(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A training batch in a random symmetry of the square with ``augment="dihedral"`` (else as it is)."""
        if self.cfg.augment != "dihedral":
            return batch
        x = batch[0]
        k = int(torch.randint(8 if x.shape[-1] == x.shape[-2] else 4, ()).item())
        frames = tuple(dihedral(t, k).contiguous() for t in batch[:3])
        return frames + tuple(dihedral_points(o, k).contiguous() for o in batch[3:])

    def _epoch(self) -> None:
        """Train the rest of the current epoch; stop inside it only when the time budget is spent."""
        done = self.progress_state
        self.sampler.set_epoch(self.epoch, skip=done["batch"] * self.cfg.batch_size)
        self.net.train()
        batches = iter(self.loader)  # draws the DataLoader's base seed from torch's generator
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        started = time.perf_counter() - done["seconds"]
        title = f"epoch {self.epoch + 1}/{self.cfg.epochs}"
        with _progress_bar(self.progress, title, self.steps_per_epoch, done["batch"]) as bar:
            for batch in batches:
                x = batch[0]
                loss = self._step(*self._augmented(*self._batch(*batch)))
                done["batch"] += 1
                done["loss_sum"] += loss * len(x)
                done["count"] += len(x)
                done["seconds"] = time.perf_counter() - started
                bar(loss=done["loss_sum"] / done["count"], rate=done["count"] * self.dist.world / done["seconds"])
                self.out_of_time = self._budget_spent()
                if done["batch"] < self.steps_per_epoch:
                    if self.out_of_time:
                        return self._stop_inside_epoch()
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.dist.main:
                        self._save(best=False)
        self._end_epoch()

    def _step(self, x: torch.Tensor, y: torch.Tensor, *observed: torch.Tensor) -> float:
        """One optimiser step; returns the batch's loss."""
        cfg = self.cfg
        ratio = models.scheduled_sampling_ratio(self.step, self.total_steps) if cfg.scheduled_sampling else 0.0
        with self._autocast():
            loss = self._train_loss(x, y, ratio, *observed)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {self.step} (loss {loss.item()}); "
                                     "lower the learning rate or clip gradients (grad_clip)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.item()

    def _budget_spent(self) -> bool:
        """Past the deadline (on any rank: all ranks stop after the same step)."""
        if self.deadline is None:
            return False
        return self.dist.sum(float(time.monotonic() > self.deadline), device=self.dev)[0] > 0

    def _end_epoch(self) -> None:
        cfg, done = self.cfg, self.progress_state
        loss_sum, count = self.dist.sum(done["loss_sum"], done["count"], device=self.dev)
        seconds = done["seconds"]
        val_loss, val_mse = self._validate()
        self.epoch += 1
        self.progress_state = _fresh_progress()
        row = {"epoch": self.epoch, "step": self.step, "samples": int(count), "train_loss": loss_sum / count,
               "val_loss": val_loss, "val_mse": val_mse, "lr": self.scheduler.get_last_lr()[0],
               "seconds": seconds, "samples_per_s": count / seconds}
        self.history.append(row)
        improved = self._monitor(val_loss, row["train_loss"])
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.stopped_early = bool(cfg.patience) and self.bad_epochs >= cfg.patience and self.epoch < cfg.epochs
        log.info("epoch %d: train %.5f, val %.5f, %.1f samples/s", self.epoch, row["train_loss"], val_loss,
                 row["samples_per_s"])
        if self.dist.main:
            self._save(best=improved)
            self.log.write(self.history)
        if self.stopped_early:
            log.info("early stop: no lower validation loss for %d epochs", self.bad_epochs)

    def _stop_inside_epoch(self) -> None:
        """Time budget spent mid-epoch: validate, keep the model as best.pt if it is, checkpoint the step."""
        done = self.progress_state
        loss_sum, count = self.dist.sum(done["loss_sum"], done["count"], device=self.dev)
        rng = rng_state()  # the validation loader draws a seed: keep the run's random stream as it was
        val_loss, _ = self._validate()
        set_rng_state(rng)
        improved = self._monitor(val_loss, loss_sum / count)
        log.info("time budget spent at step %d (epoch %d, batch %d of %d): val %.5f; --resume continues here",
                 self.step, self.epoch + 1, done["batch"], self.steps_per_epoch, val_loss)
        if self.dist.main:
            self._save(best=improved)

    def _monitor(self, val_loss: float, train_loss: float) -> bool:
        """Track the lowest validation loss (the training loss without a validation split); True if new."""
        monitored = val_loss if math.isfinite(val_loss) else train_loss
        improved = monitored < self.best
        self.best = min(self.best, monitored)
        return improved

    def _train_loss(self, x: torch.Tensor, y: torch.Tensor, ratio: float, *observed: torch.Tensor) -> torch.Tensor:
        """Paper loss of one batch (over the input phase's one-step outputs too with ``input_phase_loss``).

        With ``observed = (targets as observed, origin)`` (``lagrangian_loss="observed"``)
        the forecast frames are advected forward
        (:func:`nowcast.lagrangian.advect_forward`) and scored against those;
        teacher forcing and the input phase stay in the Lagrangian frame (``y``).
        """
        extra = {"input_phase": True} if self.cfg.input_phase_loss else {}
        pred = models.run_padded(self.net, x, self.model.size_multiple, target=y if ratio > 0 else None,
                                 sampling_ratio=ratio, **extra)
        pred, y = self._scored(pred, y, *observed)
        return self.loss_fn(pred, torch.cat([x[:, 1:], y], 1) if self.cfg.input_phase_loss else y)

    @staticmethod
    def _scored(pred: torch.Tensor, y: torch.Tensor, *observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred, y)``; given ``observed = (targets, origin)``, ``pred``'s last ``T_out`` frames advected
        forward, and the observed targets."""
        if not observed:
            return pred, y
        y, origin = observed
        t = y.shape[1]
        forecast = lagrangian.advect_forward(pred[:, -t:], origin, fill=y)
        return (torch.cat([pred[:, :-t], forecast], 1) if pred.shape[1] > t else forecast), y

    @torch.no_grad()
    def _validate(self) -> tuple[float, float]:
        """Mean paper loss and MSE (transformed units) over the validation split; NaN if it is empty."""
        model = self.evaluated
        self.net.eval()
        model.eval()
        loss_sum = mse_sum = count = 0.0
        for batch in self.val_loader:
            x, y, *observed = self._batch(*batch)
            with self._autocast():
                pred, y = self._scored(models.run_padded(model, x, model.size_multiple), y, *observed)
            loss_sum += self.loss_fn(pred, y).item() * len(x)
            mse_sum += models.mse(pred, y).item() * len(x)
            count += len(x)
        self.net.train()
        model.train()
        loss_sum, mse_sum, count = self.dist.sum(loss_sum, mse_sum, count, device=self.dev)
        return (loss_sum / count, mse_sum / count) if count else (math.nan, math.nan)

    def _save(self, best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt``) with everything a resumed run needs."""
        model = self.model
        state = {
            "epoch": self.epoch, "step": self.step, "progress": dict(self.progress_state),
            "model": {"name": model.preset or model.family, "config": dict(model.config),
                      "state": self.evaluated.state_dict()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "transform": self.data.transform.to_dict(),
            "rng": rng_state(), "config": asdict(self.cfg), "data": _data_meta(self.data),
            "history": list(self.history),
            "early_stopping": {"best": self.best, "bad_epochs": self.bad_epochs, "stopped": self.stopped_early},
        }
        if self.ema is not None:
            state["ema"] = {"trained": model.state_dict(), "n_averaged": self.ema.n_averaged}
        save_checkpoint(state, self.run_dir / LAST)
        if best:
            save_checkpoint(state, self.run_dir / BEST)


def _fresh_progress() -> dict[str, float]:
    """Progress through the current epoch: batches done, their summed loss, samples and seconds."""
    return {"batch": 0, "loss_sum": 0.0, "count": 0, "seconds": 0.0}


def _no_validation(cfg: TrainConfig, train: WindowDataset) -> str:
    """Why the validation split holds no window, and what to pass instead."""
    length = cfg.t_in + cfg.t_out
    runs = np.bincount(event_ids(train.times, train.step))
    how = "chronological" if cfg.block is None else f"block {cfg.block}"
    options = []
    if len(runs) > 1 and cfg.block not in ("event", EACH_EVENT):
        options.append(f"whole events to validation (--block event, block='event'; there are {len(runs)})")
    options += ["a larger validation share (e.g. --split 0.6,0.4,0)",
                f"fewer frames per sample (--t-in/--t-out; now {cfg.t_in}+{cfg.t_out})",
                "no validation (--split 1,0,0, fractions=(1, 0, 0); best.pt then follows the training loss)"]
    return (f"no validation window: the validation share {cfg.fractions[1]:g} ({how} split) of {len(train.times)} "
            f"frames in {len(runs)} gapless run(s), the longest {runs.max()}, holds no {length} consecutive "
            f"frames of its own. Pass " + "; or ".join(options))


def _data_meta(data: Splits) -> dict[str, Any]:
    train = data.train
    return {"variable": str(train.variable), "time_step": str(train.step), "channels": train.channels,
            "patch": list(train.patch), "domain": [train.height, train.width],
            "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}


def _describe(source) -> str:
    return source.attrs.get("source", "the dataset") if isinstance(source, xr.Dataset) else str(source)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in kinds:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {sorted(kinds)}")
    return kinds[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) under OpenSTL's cosine schedule (timm, stepped per epoch).

    Linear warm-up from :data:`WARMUP_LR` over ``warmup_epochs``, then
    ``MIN_LR + (lr - MIN_LR) · (1 + cos(π · epoch / epochs)) / 2`` (the cosine
    counts from epoch 0, as timm's without ``warmup_prefix``).
    """
    if epoch < warmup_epochs:
        return WARMUP_LR + epoch * (lr - WARMUP_LR) / warmup_epochs
    return MIN_LR + 0.5 * (lr - MIN_LR) * (1.0 + math.cos(math.pi * min(epoch / epochs, 1.0)))


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int,
               steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped per batch: ``onecycle``, ``cosine`` (:func:`cosine_lr`, constant within an epoch) or ``constant``."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    if cfg.schedule == "cosine":
        return sched.LambdaLR(optimizer, lambda step: cosine_lr(step // steps_per_epoch, cfg.epochs, cfg.lr,
                                                                cfg.warmup_epochs) / cfg.lr)
    if cfg.schedule == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose onecycle, cosine or constant")


def _amp_dtype(amp: str, dev: torch.device) -> torch.dtype | None:
    choices = {"auto": torch.bfloat16 if dev.type == "cuda" else None, "bf16": torch.bfloat16,
               "fp16": torch.float16, "off": None}
    if amp not in choices:
        raise ValueError(f"unknown amp setting {amp!r}; choose one of {sorted(choices)}")
    return choices[amp]


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("tensorboard logging needs the 'tensorboard' package (pip install tensorboard)") from err
    return SummaryWriter(str(run_dir / "tensorboard"))


@contextlib.contextmanager
def _progress_bar(enabled: bool, title: str, total: int, completed: int = 0):
    """A rich progress bar with loss and throughput; yields ``update(loss=..., rate=...)``."""
    if not enabled:
        yield lambda **_: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} samples/s"),
               TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(title, total=total, completed=completed, loss=math.nan, rate=0.0)
        yield lambda **fields: bar.update(task, advance=1, **fields)
