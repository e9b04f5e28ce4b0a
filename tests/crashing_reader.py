"""A reader that kills its own process on files named ``*crash*`` (tests of the process decoding route)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from nowcast.sources.bom import open_bom


def open_crashing_bom(path, **options):
    """Read a Rainfields file, but segfault (a real SIGSEGV, as a broken native decoder would) on ``*crash*``."""
    if "crash" in Path(path).name:
        ctypes.string_at(0)
    return open_bom(path, **options)
