"""``nowcast map``: maps of archive frames or forecast files (PNG panels, GIF/MP4 loops)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from nowcast.cli import app, fail


@app.command("map")
def map_command(
    inputs: List[Path] = typer.Argument(..., help="A Zarr archive (its frames) or forecast CF-NetCDF files "
                                                  "of one issue time (one row per method)."),
    out: Path = typer.Option(..., "--out", "-o", help="Image to write: .png (panels), .gif or .mp4 (a loop)."),
    obs: Optional[Path] = typer.Option(None, "--obs", help="Observation archive shown next to forecasts."),
    at: Optional[List[str]] = typer.Option(None, help="Archive frame times to draw (repeatable; default: the "
                                                      "newest --frames)."),
    frames: Optional[int] = typer.Option(None, help="How many of the newest archive frames (default: 4 in a "
                                                    "PNG, 12 in a loop)."),
    leads: Optional[str] = typer.Option(None, help="Forecast lead times in minutes, comma-separated (default: "
                                                   "up to --max-leads evenly spaced)."),
    max_leads: int = typer.Option(4, help="Most forecast lead columns in a PNG."),
    flow: str = typer.Option("inflow", help="Crowd flows: inflow or outflow."),
) -> None:
    """Draw archive frames or forecasts on the data's own projection (lat/lon grids: equal-area).

    Every map has the source and place in its title, a labelled graticule, coastlines and borders, the valid
    (and issue) time and the units.
    """
    import pandas as pd

    from nowcast import maps
    from nowcast.archive import ArchiveError, open_archive
    from nowcast.schema import SchemaError
    from nowcast.verification.report import VerificationError, method_name, open_forecast

    loop = out.suffix.lower() in (".gif", ".mp4")
    try:
        if len(inputs) == 1 and inputs[0].is_dir():
            ds = open_archive(inputs[0])
            times = ([pd.Timestamp(t) for t in at] if at else
                     list(pd.DatetimeIndex(ds["time"].values)[-(frames or (12 if loop else 4)):]))
            missing = [t for t in times if t not in pd.DatetimeIndex(ds["time"].values)]
            if missing:
                fail(f"{inputs[0]} holds no frame at {', '.join(f'{t:%Y-%m-%d %H:%M}' for t in missing)}")
            path = (maps.animate_forecast(ds.sel(time=times), out, flow=flow) if loop else
                    maps.plot_frames(ds, out, times=times, flow=flow))
            shown = f"{len(times)} frames of {inputs[0]}"
        else:
            forecasts = {}
            for file in inputs:
                forecast = open_forecast(file)
                forecasts[method_name(forecast)] = forecast
            issued = {pd.Timestamp(f["forecast_reference_time"].values) for f in forecasts.values()}
            if len(issued) > 1:
                fail("the forecasts were issued at different times: "
                     + ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in sorted(issued)) + "; map one issue time at a time")
            observations = open_archive(obs) if obs is not None else None
            lead_list = None if leads is None else [float(v) for v in leads.split(",") if v.strip()]
            path = (maps.animate_forecast(forecasts, out, obs=observations, flow=flow) if loop else
                    maps.plot_forecast_panels(forecasts, observations, out, leads_min=lead_list,
                                              max_leads=max_leads, flow=flow))
            shown = ", ".join(forecasts) + (" and the observations" if observations is not None else "")
    except (ArchiveError, SchemaError, VerificationError, ValueError) as err:
        fail(str(err))
    typer.echo(f"{path}  ({shown})")
