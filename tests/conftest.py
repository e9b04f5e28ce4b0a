"""Shared fixtures: real data location, an isolated Prefect home, offline guards."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NOWCAST_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Prefect reads these at import: keep its state inside the test session.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / f"test-{os.getpid()}"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.setdefault("MPLBACKEND", "Agg")
# Two xdist workers share two cores: more than one thread each oversubscribes
# them (an MS-LSTM test goes from ~5 s to minutes).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import nowcast  # noqa: E402,F401  (applies offline defaults)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the real radar and traffic files); skips if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~12 s once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _no_downloads():
    """Cartopy must never try to download Natural Earth data in tests."""
    import cartopy.io

    with warnings.catch_warnings():
        warnings.simplefilter("error", cartopy.io.DownloadWarning)
        yield
