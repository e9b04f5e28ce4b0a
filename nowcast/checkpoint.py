"""Checkpoints: one ``torch.save`` file per state, written atomically, loaded with ``weights_only=True``.

A checkpoint is a ``dict`` of tensors and primitive containers only (no
pickled objects), so :func:`load_checkpoint` never runs code from the file:

* ``format``: :data:`FORMAT`; ``epoch`` (completed epochs), ``step``; ``progress``
  (batches, loss sum, samples and seconds of the epoch under way: zero at its end);
* ``model``: ``{"name": preset or family, "config": model.config, "state": state_dict}``;
* ``optimizer``, ``scheduler``, ``scaler``: their ``state_dict()``;
* ``transform``: :meth:`nowcast.transforms.Transform.to_dict`;
* ``rng``: torch (CPU and CUDA), numpy and Python generator states;
* ``config``: the training configuration; ``data``: what the model was trained on
  (variable, time step, channels, patch); ``history``: metrics per epoch;
  ``early_stopping``: best validation loss and epochs without improvement.

A run folder holds ``last.pt`` (every epoch and every ``--checkpoint-every``
steps, for ``--resume``) and
``best.pt`` (lowest validation loss, for forecasting).

Every checkpoint carries ``content_sha256``, a digest of all its tensors and
values computed at save and checked at load, so flipped bytes that still
unpickle (a corrupt optimiser state, say) are an error, not a silent load.

Beside each checkpoint, ``best.meta.json`` (``last.meta.json``) holds its
:func:`metadata` (everything but tensors) and the file's size and
modification time: :func:`read_metadata` plans a forecast from it (input and
output frames, preset, frame) without reading the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nowcast.products.atomic import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = "nowcast-checkpoint-v1"
LAST, BEST = "last.pt", "best.pt"
#: The entries of a checkpoint that :func:`metadata` keeps (plus the model's name and configuration).
METADATA_KEYS = ("format", "epoch", "step", "transform", "data", "config")


class CheckpointError(RuntimeError):
    """A file or run folder holds no usable nowcast checkpoint (names the path)."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); return ``path``."""
    import torch

    path = Path(path)
    state = {"format": FORMAT, **state}
    state["content_sha256"] = content_hash(state)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    _write_sidecar(state, path)
    return path


def metadata_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of checkpoint ``path``: ``best.pt`` → ``best.meta.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.meta.json")


def metadata(state: dict[str, Any]) -> dict[str, Any]:
    """What a forecast plan needs of a checkpoint: :data:`METADATA_KEYS` and the model's name and
    configuration; no tensors."""
    meta = {key: state[key] for key in METADATA_KEYS if key in state}
    meta["model"] = {key: value for key, value in dict(state.get("model") or {}).items() if key != "state"}
    return meta


def _file_stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_sidecar(state: dict[str, Any], path: Path) -> None:
    """Write :func:`metadata_path` atomically after the checkpoint; a value JSON cannot hold leaves none
    (:func:`read_metadata` then reads the checkpoint)."""
    sidecar = metadata_path(path)
    try:
        text = json.dumps({**metadata(state), "file": _file_stamp(path)}, indent=1)
    except (TypeError, ValueError):
        sidecar.unlink(missing_ok=True)
        return
    write_text_atomic(sidecar, text)


def find_checkpoint(run_dir_or_file: str | os.PathLike, prefer: tuple[str, ...] = (BEST, LAST)) -> Path:
    """The checkpoint file itself, or the first of ``prefer`` found in a run folder."""
    path = Path(run_dir_or_file)
    if path.is_file():
        return path
    if path.is_dir():
        for name in prefer:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no checkpoint ({' or '.join(prefer)}) in this run folder")
    raise CheckpointError(f"{path}: no such checkpoint file or run folder")


def _torch_load(path: Path, map_location: str | torch.device, mmap: bool = False) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - unreadable, truncated or unsafe files alike
        raise CheckpointError(f"{path}: cannot load checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a nowcast checkpoint (expected format {FORMAT!r})")
    return state


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); raise :class:`CheckpointError` if it is not one."""
    path = Path(path)
    state = _torch_load(path, map_location)
    recorded = state.get("content_sha256")
    if recorded is not None and recorded != content_hash(state):
        raise CheckpointError(f"{path}: corrupt checkpoint (its content no longer matches the digest recorded "
                              "when it was saved)")
    return state


def load_run(run_dir_or_file: str | os.PathLike, map_location: str | torch.device = "cpu",
             prefer: tuple[str, ...] = (BEST, LAST)) -> tuple[Path, dict[str, Any]]:
    """Load a checkpoint file, or the first of ``prefer`` in a run folder that loads; a corrupt
    ``best.pt`` falls back to ``last.pt`` with a warning. Returns the path used and the state."""
    path = Path(run_dir_or_file)
    if not path.is_dir():
        return find_checkpoint(path), load_checkpoint(find_checkpoint(path), map_location)
    errors = []
    for name in prefer:
        if not (path / name).is_file():
            continue
        try:
            state = load_checkpoint(path / name, map_location)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            log.warning("%s; using %s instead", "; ".join(errors), path / name)
        return path / name, state
    raise CheckpointError("; ".join(errors) or f"{path}: no checkpoint ({' or '.join(prefer)}) in this run folder")


def read_metadata(run_dir_or_file: str | os.PathLike, prefer: tuple[str, ...] = (BEST, LAST)
                  ) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file, or the first of ``prefer`` in a run folder that reads, and its :func:`metadata`.

    From the sidecar (:func:`metadata_path`) while it matches the file's size and modification time;
    otherwise (a run saved before sidecars, a file copied without its times) from the checkpoint
    itself, memory-mapped so that no tensor is read. The weights' digest is checked only when they are
    loaded (:func:`load_run`).
    """
    path = Path(run_dir_or_file)
    candidates = [path / name for name in prefer if (path / name).is_file()] if path.is_dir() \
        else [find_checkpoint(path)]
    errors = []
    for candidate in candidates:
        try:
            return candidate, _metadata_of(candidate)
        except CheckpointError as err:
            errors.append(str(err))
    raise CheckpointError("; ".join(errors) or f"{path}: no checkpoint ({' or '.join(prefer)}) in this run folder")


def _metadata_of(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(metadata_path(path).read_text())
        if meta.pop("file") == _file_stamp(path):
            return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return metadata(_torch_load(path, "cpu", mmap=True))


def content_hash(state: dict[str, Any]) -> str:
    """SHA-256 over every tensor's bytes and every other value of ``state`` (its ``content_sha256`` left out)."""
    import torch

    digest = hashlib.sha256()

    def visit(value, key: str) -> None:
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            for name in sorted(value, key=str):
                if name != "content_sha256":
                    visit(value[name], f"{key}/{name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{key}[{i}]")
        else:
            digest.update(repr(value).encode())

    visit(state, "")
    return digest.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file: identifies the exact checkpoint behind a forecast."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values."""
    import torch

    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`rng_state`."""
    import torch

    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
