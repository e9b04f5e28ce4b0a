"""The README's command-line tour runs as written, in order, from the repository root (tiny budgets).

The commands are parsed from the README's first ``bash`` block under "### Command line", so the two never
drift apart. Only the training budget is shrunk (``--time-budget 2`` becomes a couple of steps); the
outputs must all be ignored by git, so ``git status`` stays clean after the tour.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOWCAST = Path(sys.executable).parent / "nowcast"
TINY_TRAINING = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--patch", "32", "--no-progress"]


def tour_commands() -> list[list[str]]:
    """The tour's commands: the first ``bash`` block after "### Command line", comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Command line"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.split("#")[0].strip()]


def test_tour_is_what_the_readme_promises():
    commands = tour_commands()
    verbs = [c[1] for c in commands]
    assert verbs == ["sources", "ingest", "models", "train", "forecast", "verify", "map"]
    train = commands[verbs.index("train")]
    assert train[train.index("--time-budget") + 1] == "2" and "--steps" not in " ".join(train)


def _tiny(args: list[str], shared: Path, cwd: Path) -> list[str]:
    """Shared-data paths made absolute, the training budget shrunk, globs expanded (as a shell would)."""
    out = []
    skip = 0
    for i, arg in enumerate(args):
        if skip:
            skip -= 1
            continue
        if arg == "--time-budget":
            out += TINY_TRAINING
            skip = 1
            continue
        arg = arg.replace("../shared/data", str(shared))
        out += sorted(glob.glob(arg, root_dir=cwd)) if "*" in arg else [arg]
    return out


@pytest.mark.slow
@pytest.mark.realdata
def test_readme_tour_runs_in_order(shared_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "NOWCAST_SHARED_DATA": str(shared_data)}
    for args in tour_commands():
        assert args[0] == "nowcast"
        command = [str(NOWCAST)] + _tiny(args[1:], shared_data, tmp_path)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "verification" / "report.md").is_file()
    assert (tmp_path / "verification" / "forecast_map.png").is_file()
    outputs = sorted(p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir())
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert sorted(ignored) == outputs, f"git status would show {set(outputs) - set(ignored)} after the tour"


def test_help_renders_without_template_artefacts():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    for verb in ("forecast", "verify", "map", "train"):
        text = subprocess.run([str(NOWCAST), verb, "--help"], env=env, capture_output=True, text=True).stdout
        assert "<bool>" not in text and "{" not in text.split("\n", 3)[1] and "Usage:" in text, text


def test_license_is_an_spdx_string():
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "BSD-3-Clause"
