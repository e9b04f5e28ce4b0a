"""Verification flow: forecast files + observation archive → scores table, NetCDF and report.

``python -m flows.verify FORECAST.nc... --obs ARCHIVE --out DIR [--dask ADDRESS]``.
One task finds each case's common support (the cells every method issued at
that time forecasts), one task per forecast file (two at a time) computes its
(small) score sums on it, retried on transient read errors; one task
aggregates them by method and lead time and writes ``scores.csv``, ``scores.nc``, the figures and ``report.md`` (see
:mod:`nowcast.verification.report`). With ``dask_address`` the array work
(archive reads, scores) runs on that Dask scheduler.
"""

from __future__ import annotations

import argparse
import contextlib

import nowcast  # noqa: F401  (offline defaults before prefect is imported)
from nowcast.verification import report
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def case_supports(forecasts: list[str], options: report.VerifyOptions) -> list:
    return report.case_supports(forecasts, options)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def score_case(forecast: str, obs_archive: str, options: report.VerifyOptions, support) -> report.Case:
    from nowcast.archive import open_archive

    return report.score_case(forecast, open_archive(obs_archive), options, support)


@task(cache_policy=NO_CACHE)
def write_outputs(cases: list[report.Case], obs_archive: str, out_dir: str, options: report.VerifyOptions,
                  animate: bool) -> dict:
    from nowcast.archive import open_archive

    scores = report.aggregate(cases, options.aggregate).assign_attrs(support=options.support)
    table, csv, netcdf = report.write_scores(scores, out_dir)
    path, figures = report.write_report(scores, table, cases, open_archive(obs_archive), out_dir,
                                        obs_label=obs_archive, animate=animate)
    return {"scores_csv": str(csv), "scores_nc": str(netcdf), "report": str(path),
            "figures": [str(f) for f in figures], "methods": [str(m) for m in scores["method"].values]}


# Two files scored at a time: each holds one forecast and its observed frames in memory.
@flow(name="nowcast-verify", task_runner=ThreadPoolTaskRunner(max_workers=2))
def verify_flow(forecasts: list[str], obs_archive: str, out_dir: str, dask_address: str | None = None,
                thresholds: list[float] | None = None, fss_scales_km: list[float] | None = None,
                data_range: float | None = None, openstl: bool = False, support: str = "common",
                aggregate: str = "pooled", animate: bool = True) -> dict:
    """Score forecast files against an archive by method and lead time; write table, NetCDF and report."""
    logger = get_run_logger()
    options = report.VerifyOptions(
        thresholds=None if thresholds is None else tuple(thresholds),
        fss_scales_km=report.DEFAULT_FSS_SCALES_KM if fss_scales_km is None else tuple(fss_scales_km),
        data_range=data_range, openstl=openstl, support=support, aggregate=aggregate)
    with _dask(dask_address):
        supports = case_supports(forecasts, options)
        futures = [score_case.submit(path, obs_archive, options, mask) for path, mask in zip(forecasts, supports)]
        outputs = write_outputs([future.result() for future in futures], obs_archive, out_dir, options, animate)
    logger.info("verified %d forecast(s) of %s: %s", len(forecasts), ", ".join(outputs["methods"]),
                outputs["report"])
    return outputs


def _dask(address: str | None):
    """A Dask client for ``address`` (dask computations go there while it is open), or nothing."""
    if address is None:
        return contextlib.nullcontext()
    from distributed import Client

    return Client(address)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=verify_flow.__doc__)
    parser.add_argument("forecasts", nargs="+")
    parser.add_argument("--obs", required=True, help="observation archive (Zarr)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dask", default=None, help="Dask scheduler address")
    args = parser.parse_args()
    print(verify_flow(args.forecasts, args.obs, args.out, dask_address=args.dask))
