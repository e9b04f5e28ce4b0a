"""Real radar fields and forecasts for the verification, map and verify tests.

FMI composites are read with pysteps' own importer and Z-R conversion (not
``nowcast.sources``), so the cross-checks compare against pysteps on its own
terms. "Forecasts" are earlier frames issued as later ones (persistence),
which gives real-looking skill that decays with lead time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.schema import make_dataset, make_forecast

FMI_PGM = Path("radar/fmi/pgm/20160928")


def fmi_observations(shared_data: Path, start: int = 0, count: int = 6,
                     window: tuple[slice, slice] | None = None) -> xr.Dataset:
    """``count`` consecutive FMI rain-rate composites (mm/h, NaN outside radar range) as a dataset.

    ``window`` (row slice, column slice) crops the 1226 x 760 composite.
    """
    from pysteps.io import import_fmi_pgm
    from pysteps.utils import conversion

    files = sorted((shared_data / FMI_PGM).glob("*.pgm.gz"))[start:start + count]
    fields, times = [], []
    for path in files:
        dbz, _, meta = import_fmi_pgm(str(path), gzipped=True)
        rain, meta = conversion.to_rainrate(dbz, meta)
        fields.append(rain)
        times.append(pd.Timestamp(path.name[:12]))
    data = np.stack(fields).astype("f4")
    ny, nx = data.shape[1:]
    x = meta["x1"] + (np.arange(nx) + 0.5) * meta["xpixelsize"]
    y = meta["y2"] - (np.arange(ny) + 0.5) * meta["ypixelsize"]
    rows, cols = window or (slice(None), slice(None))
    return make_dataset(data[:, rows, cols], times=times, x=x[cols], y=y[rows], crs=meta["projection"],
                        source="FMI composite", time_step="5min")


def persistence(obs: xr.Dataset, issue: int, n_leads: int, source: str = "persistence",
                lag: int = 0) -> xr.Dataset:
    """Forecast issued at ``obs.time[issue]`` repeating the frame ``lag`` steps before it."""
    frame = obs["rainrate"].values[issue - lag]
    return make_forecast(np.repeat(frame[None], n_leads, axis=0), like=obs,
                         reference_time=obs["time"].values[issue], source=source)


def shifted(obs: xr.Dataset, issue: int, n_leads: int, source: str = "advected") -> xr.Dataset:
    """Forecast made of the true future frames shifted by a few cells (a near-miss with the right texture)."""
    frames = obs["rainrate"].values[issue + 1:issue + 1 + n_leads]
    return make_forecast(np.roll(frames, shift=(3, -2), axis=(1, 2)), like=obs,
                         reference_time=obs["time"].values[issue], source=source)
