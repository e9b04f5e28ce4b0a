"""Write files atomically: readers never see a half-written product.

A writer gets a temporary path in the target's own folder (so the final
rename stays on one file system and is atomic) with the target's suffix (GDAL,
Pillow and matplotlib pick the format from it); on success the file is renamed
onto the target, on failure it is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` if the block succeeds.

    The parent folder is created if needed. The temporary file is not created
    here, so writers that refuse to overwrite (or create files with their own
    permissions) behave as with the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
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
