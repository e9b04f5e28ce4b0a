"""Process-wide settings that make the stack run offline and quietly.

Environment variables are only set when the user has not set them, and
before Prefect, Dask or pysteps are imported (they read them at import).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

_DEFAULTS = {
    # Prefect's server and client analytics phone home; off for offline use.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # Prefect forwards distributed's INFO logs (~80 lines per flow).
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


def configure_offline() -> None:
    """Set offline-safe defaults for Prefect, Dask, pysteps and cartopy."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path.home() / ".nowcast" / "prefect")))
    home.mkdir(parents=True, exist_ok=True)
    if "PYSTEPSRC" not in os.environ:
        rc = _silent_pystepsrc()
        if rc is not None:
            os.environ["PYSTEPSRC"] = str(rc)


def _silent_pystepsrc() -> Path | None:
    """A copy of pysteps' bundled rc file with ``silent_import`` on.

    pysteps prints its configuration path to stdout on import unless told not
    to, which pollutes CLI output and JSON written to stdout.
    """
    spec = importlib.util.find_spec("pysteps")
    if spec is None or not spec.submodule_search_locations:
        return None
    bundled = Path(next(iter(spec.submodule_search_locations))) / "pystepsrc"
    if not bundled.exists():
        return None
    target = Path(tempfile.gettempdir()) / f"nowcast-pystepsrc-{os.getuid()}"
    text = bundled.read_text().replace('"silent_import": false', '"silent_import": true')
    if not target.exists() or target.read_text() != text:
        from nowcast.products.atomic import write_text_atomic

        write_text_atomic(target, text)
    return target
