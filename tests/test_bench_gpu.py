"""bench/gpu.py's CPU dry run: every path of the GPU benchmark on tiny presets, in seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import gpu  # noqa: E402

pytestmark = pytest.mark.xdist_group("training")


def test_gpu_bench_dry_run_writes_its_report(tmp_path):
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu-cpu-dryrun.md").read_text()
    assert "not GPU numbers" in text
    for preset in gpu.DRY_PRESETS:
        assert f"| {preset} | 1 | bf16 + channels_last |" in text
    assert "## Training tau-tiny" in text and "2 steps (1 whole epochs)" in text
