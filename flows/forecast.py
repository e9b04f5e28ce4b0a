"""Forecast flow: newest archived frames → model and baseline nowcasts → one products folder.

``python -m flows.forecast ARCHIVE --checkpoint RUN_DIR --out DIR [--at TIME]``
runs it once; :mod:`flows.deploy` serves it on a schedule. Each run issues
from the newest archived frame, skips (with the reason in the log) when its
input window is incomplete or already issued, retries transient failures and
writes its products to ``DIR/<issue time>/`` all at once (see
:func:`nowcast.forecast.write_products`).
"""

from __future__ import annotations

import argparse

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast import forecast as fc
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE)  # the archive grows under the same arguments
def plan(archive: str, checkpoints: list[str], out_dir: str, at: str | None) -> fc.IssuePlan:
    return fc.plan_issue(archive, checkpoints, out_dir, at=at)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def make_forecasts(archive: str, checkpoints: list[str], issue: fc.IssuePlan, n_leads: int | None,
                   baselines: bool, device: str) -> dict:
    from nowcast.archive import open_archive

    return fc.forecast_with_baselines(open_archive(archive), checkpoints, at=issue.reference_time,
                                      n_leads=n_leads or issue.t_out, device=device, include_baselines=baselines)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def write_products(forecasts: dict, issue: fc.IssuePlan, formats: list[str], extra: dict) -> str:
    return str(fc.write_products(forecasts, issue.folder, formats=formats, extra=extra))


@flow(name="nowcast-forecast")
def forecast_flow(archive: str, checkpoints: list[str], out_dir: str, at: str | None = None,
                  n_leads: int | None = None, baselines: bool = True, formats: list[str] | None = None,
                  device: str = "cpu") -> dict:
    """Issue nowcasts of every checkpoint (plus baselines) from the newest archived frames."""
    logger = get_run_logger()
    issue = plan(archive, checkpoints, out_dir, at)
    if issue.skip:
        logger.warning("skipped: %s", issue.skip)
        return {"status": "skipped", "reason": issue.skip, "reference_time": str(issue.reference_time)}
    forecasts = make_forecasts(archive, checkpoints, issue, n_leads, baselines, device)
    extra = {"archive": archive, "checkpoints": checkpoints, "flow_run": str(runtime.flow_run.id),
             "reference_time": str(issue.reference_time)}
    folder = write_products(forecasts, issue, list(formats or fc.FORMATS), extra)
    logger.info("issued %s at %s into %s", ", ".join(forecasts), issue.reference_time, folder)
    return {"status": "issued", "folder": folder, "reference_time": str(issue.reference_time),
            "methods": list(forecasts)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=forecast_flow.__doc__)
    parser.add_argument("archive")
    parser.add_argument("--checkpoint", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--at", default=None)
    parser.add_argument("--leads", type=int, default=None)
    args = parser.parse_args()
    print(forecast_flow(args.archive, args.checkpoint, args.out, at=args.at, n_leads=args.leads))
