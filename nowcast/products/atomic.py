"""Write files atomically: readers never see a half-written product.

A writer gets a temporary path in the target's own folder (so the final
rename stays on one file system and is atomic) with the target's suffix (GDAL,
Pillow and matplotlib pick the format from it); on success the file is renamed
onto the target, on failure it is removed. Temporary names carry this host
and process id, so :func:`remove_stale` can tell leftovers of a killed writer
(removed by the next writer) from those of a writer still at work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
_STALE = re.compile(r"^\..*[.-](?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}(\.tmp.*)?$")


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it, before any long work.

    Raises:
        OSError: naming the folder (not a folder, read-only, no space, no permission).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
    return folder


def scratch_tag() -> str:
    """``<host>-<pid>-<random>``: part of every temporary name, so a leftover names its writer."""
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files and folders in ``folder`` left by writers on this host that no longer run."""
    removed = []
    folder = Path(folder)
    for entry in folder.glob(".*") if folder.is_dir() else ():
        match = _STALE.match(entry.name)
        if not match or match["host"] != _HOST or _running(int(match["pid"])):
            continue
        log.warning("removing %s, left by a writer that was killed", entry)
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` if the block succeeds.

    The parent folder is created if needed. The temporary file is not created
    here, so writers that refuse to overwrite (or create files with their own
    permissions) behave as with the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{scratch_tag()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))
