"""Forecast flow: archived frames → model and baseline nowcasts → one products folder per issue time.

``python -m flows.forecast ARCHIVE [--checkpoint RUN_DIR ...] --out DIR [--at TIME ...]
[--start T --end T --every 30min] [--webmap]`` runs it once; :mod:`flows.deploy`
serves it on a schedule. It is :func:`nowcast.forecast.issue_nowcasts` (the
same call as ``nowcast forecast``) as a retried task: by default it issues
from the newest archived frame; a method whose input window is incomplete is
skipped and named while the others are issued; an issue time already issued
is skipped; products go to ``DIR/<issue time>/`` all at once.
"""

from __future__ import annotations

import argparse

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast import forecast as fc
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)  # the archive grows under the same arguments
def issue_nowcasts(archive: str, checkpoints: list[str], out_dir: str, options: dict) -> list[fc.Issue]:
    return fc.issue_nowcasts(archive, checkpoints, out_dir, **options)


@flow(name="nowcast-forecast")
def forecast_flow(archive: str, checkpoints: list[str] | None, out_dir: str, at: list[str] | None = None,
                  start: str | None = None, end: str | None = None, every: str | None = None,
                  n_leads: int | None = None, baselines: bool = True, formats: list[str] | None = None,
                  device: str = "cpu") -> dict:
    """Issue nowcasts of every checkpoint (none: baselines only) plus baselines at each issue time."""
    logger = get_run_logger()
    checkpoints = list(checkpoints or [])
    extra = {"archive": archive, "checkpoints": checkpoints, "flow_run": str(runtime.flow_run.id)}
    options = {"at": list(at or []), "start": start, "end": end, "every": every, "n_leads": n_leads,
               "include_baselines": baselines, "formats": list(formats or fc.DEFAULT_FORMATS), "device": device,
               "extra": extra}
    issues = issue_nowcasts(archive, checkpoints, out_dir, options)
    report = []
    for issue in issues:
        for name, why in issue.skipped.items():
            logger.warning("%s not issued at %s: %s", name, issue.reference_time, why)
        if issue.issued:
            logger.info("issued %s at %s into %s", ", ".join(issue.methods), issue.reference_time, issue.folder)
        else:
            logger.warning("skipped %s: %s", issue.reference_time, issue.reason)
        report.append({"status": "issued" if issue.issued else "skipped", "reference_time": str(issue.reference_time),
                       "folder": str(issue.folder), "methods": issue.methods, "skipped": issue.skipped,
                       "reason": issue.reason})
    result = {"status": "issued" if any(i.issued for i in issues) else "skipped", "issues": report}
    if result["status"] == "skipped":  # a state named Skipped, not a plain Completed, in the UI and the API
        return Completed(name="Skipped", message="; ".join(f"{i.reference_time}: {i.reason}" for i in issues),
                         data=result)
    named = sorted({name for issue in issues for name in issue.skipped})
    return Completed(message=f"{sum(i.issued for i in issues)} issue time(s) written"
                             + (f"; not issued: {', '.join(named)}" if named else ""), data=result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=forecast_flow.__doc__)
    parser.add_argument("archive")
    parser.add_argument("--checkpoint", action="append", default=[], help="run folder (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--at", action="append", default=[], help="issue time (repeatable)")
    parser.add_argument("--start", default=None)
    parser.add_argument("--end", default=None)
    parser.add_argument("--every", default=None)
    parser.add_argument("--leads", type=int, default=None)
    parser.add_argument("--webmap", action="store_true", help="add web-map images")
    args = parser.parse_args()
    formats = list(fc.DEFAULT_FORMATS) + (["webmap"] if args.webmap else [])
    print(forecast_flow(args.archive, args.checkpoint, args.out, at=args.at, start=args.start, end=args.end,
                        every=args.every, n_leads=args.leads, formats=formats))
