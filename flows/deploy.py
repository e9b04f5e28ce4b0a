"""Serve the forecast flow on a schedule (a Prefect deployment) against a Prefect server.

Scheduling needs a real server; Prefect's temporary in-process API has no
scheduler. On one machine, offline::

    prefect server start --host 127.0.0.1 --port 4200          # leave running
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    nowcast serve ARCHIVE --checkpoint RUN_DIR --out DIR --interval 300
    # or: python -m flows.deploy ARCHIVE --checkpoint RUN_DIR --out DIR --cron "*/5 * * * *"

The serving process registers the deployment ``nowcast-forecast/<name>`` and
runs each scheduled flow run in a subprocess until it is stopped (Ctrl-C);
the UI at http://127.0.0.1:4200 shows the runs, skips and retries.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

import nowcast  # noqa: F401  (offline defaults before prefect is imported)

log = logging.getLogger(__name__)
DEFAULT_NAME = "scheduled"


def require_server(timeout: float = 5.0) -> str:
    """The Prefect API URL, checked to answer; raise ``RuntimeError`` saying how to start one."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    how = ("start one with `prefect server start --host 127.0.0.1 --port 4200` and set "
           "PREFECT_API_URL=http://127.0.0.1:4200/api")
    if not url:
        raise RuntimeError(f"scheduled forecasts need a Prefect server (PREFECT_API_URL is not set): {how}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as err:
        raise RuntimeError(f"no Prefect server answers at {url} ({err}): {how}") from err
    return url


def serve(archive: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
          interval: float | None = 300, cron: str | None = None, name: str = DEFAULT_NAME,
          n_leads: int | None = None, baselines: bool = True, formats: Sequence[str] | None = None,
          device: str = "cpu") -> None:
    """Serve :func:`flows.forecast.forecast_flow` every ``interval`` seconds (or on ``cron``); blocks.

    Paths are made absolute, since flow runs execute in their own processes.
    At most one run executes at a time.
    """
    from flows.forecast import forecast_flow

    url = require_server()
    parameters = {
        "archive": str(Path(archive).resolve()),
        "checkpoints": [str(Path(c).resolve()) for c in checkpoints],
        "out_dir": str(Path(out_dir).resolve()),
        "n_leads": n_leads, "baselines": baselines, "formats": list(formats) if formats else None,
        "device": device,
    }
    schedule = {"cron": cron} if cron else {"interval": interval}
    log.info("serving nowcast-forecast/%s against %s (%s)", name, url, schedule)
    forecast_flow.serve(name=name, parameters=parameters, limit=1, **schedule)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("archive")
    parser.add_argument("--checkpoint", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=300)
    parser.add_argument("--cron", default=None)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--leads", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.archive, args.checkpoint, args.out, interval=args.interval, cron=args.cron, name=args.name,
          n_leads=args.leads)


if __name__ == "__main__":
    main()
