"""Learning in the anomaly frame: crowd flows as departures from their weekly cycle.

City flows repeat by weekday and hour, which the historical average
(:func:`nowcast.baselines.historical_average`: the mean of the same weekday
and hour over the previous :data:`WEEKS` weeks) already captures, and which
a network that sees only the last few hours cannot know. With
``frame="anomaly"`` (:mod:`nowcast.models.base`) the network learns how
today departs from that cycle instead, as ST-ResNet-style models give their
networks the daily and weekly periods (Zhang et al., AAAI 2017):

1. :func:`climatology`: the historical average of every input and lead time,
   from observations before the issue time only;
2. the scaled observations minus the scaled climatology (the transform is
   fitted on the flows, so with log1p an anomaly is a log ratio) go into the
   network, whose outputs are residuals on the frame before them from a
   zero-initialised readout: an untrained network persists the issue time's
   anomaly over the weekly cycle;
3. the scaled climatology of each lead is added back and unscaled.

Training windows get their climatology from the same source
(:func:`attach`); windows without :data:`WEEKS` full weeks of history are
left out. Rain has no weekly cycle: the frame is for crowd flows only.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.schema import data_variables

if TYPE_CHECKING:
    from torch import nn

    from nowcast.transforms import Transform
    from nowcast.windows import Splits

log = logging.getLogger(__name__)

#: Weeks of history in the climatology (the historical-average baseline's default).
WEEKS = 4
#: Variables with a weekly cycle.
VARIABLES = ("crowd_flow",)


def climatology(values: xr.DataArray, times: Sequence, weeks: int = WEEKS, *, complete: bool = False) -> np.ndarray:
    """Mean of ``values`` at each of ``times`` minus 1..``weeks`` weeks, float32 ``[len(times), ...]``.

    Absent or NaN weeks are skipped (NaN where none is present), as in the
    historical-average baseline; ``complete=True`` instead gives NaN unless
    all ``weeks`` are present.
    """
    times = pd.DatetimeIndex(times)
    lags = pd.to_timedelta(np.arange(1, weeks + 1), unit="W")
    past = values.reindex(time=(times.values[:, None] - lags.values[None, :]).ravel()).values
    past = past.astype("f4").reshape((len(times), weeks) + past.shape[1:])
    if complete:
        return past.mean(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells missing in every week stay NaN
        return np.nanmean(past, axis=1)


def to_anomaly(transform: Transform, frames: np.ndarray, clim: np.ndarray) -> np.ndarray:
    """Scaled ``frames`` minus scaled ``clim`` (physical, same shape); 0 where either is NaN."""
    return np.nan_to_num(transform.forward(frames) - transform.forward(clim), nan=0.0).astype("f4")


def predict(model: nn.Module, transform: Transform, frames: np.ndarray, clim_in: np.ndarray,
            clim_out: np.ndarray, **options: Any) -> np.ndarray:
    """:func:`nowcast.forecast.predict` in the anomaly frame: physical ``[T_in, C, H, W]`` → ``[n_leads, C, H, W]``.

    ``clim_in``/``clim_out``: :func:`climatology` of the input and lead times.
    NaN where an input frame or the leads' climatology is NaN.
    """
    from nowcast.forecast import predict
    from nowcast.transforms import Identity

    # The network runs on anomalies already scaled, so forecast.predict gets no scaler of its own.
    anomalies = predict(model, Identity(), to_anomaly(transform, frames, clim_in), len(clim_out), **options)
    fields = transform.inverse(anomalies + transform.forward(clim_out))
    fields[:, np.isnan(frames).any(axis=0)] = np.nan
    fields[np.isnan(clim_out)] = np.nan
    return fields


def attach(splits: Splits, source: str | os.PathLike | xr.Dataset, weeks: int = WEEKS) -> None:
    """Serve every split's samples as anomalies; drop windows without ``weeks`` full weeks of history.

    The climatology of the whole time axis is computed once, in memory
    (crowd-flow grids are small: a year of hourly 2 x 32 x 32 flows is 70 MB).
    """
    check_variable(str(splits.train.variable))
    data = splits.train.data
    clim = climatology(data, splits.train.times, weeks, complete=True)
    have = np.isfinite(clim).reshape(len(clim), -1).all(axis=1)
    for name, split in zip(("train", "validation", "test"), (splits.train, splits.val, splits.test)):
        before = len(split)
        ends = split.samples[:, 0] + split.length
        complete = np.array([have[start:end].all() for start, end in zip(split.samples[:, 0], ends)], dtype=bool)
        split.samples = split.samples[complete]
        split.climatology = clim
        if before and not len(split):
            log.warning("no %s window has %d full weeks of history before it", name, weeks)
    if not len(splits.train):
        raise ValueError(f"the anomaly frame needs {weeks} full weeks of history before each training window; "
                         f"the archive starts {splits.train.times[0]:%Y-%m-%d}: add older data or train eulerian")
    log.info("anomaly frame: %d train, %d val, %d test samples with %d weeks of history", len(splits.train),
             len(splits.val), len(splits.test), weeks)


def check_variable(variable: str) -> None:
    """Refuse the anomaly frame for a variable without a weekly cycle."""
    if variable not in VARIABLES:
        raise ValueError(f"the anomaly frame learns departures from the weekly cycle of crowd flows; "
                         f"'{variable}' has none to learn from, so train it in the eulerian or lagrangian frame")


def climatology_of(obs: xr.Dataset, times: Sequence, weeks: int = WEEKS) -> np.ndarray:
    """:func:`climatology` of the data variable of ``obs`` at ``times``, ``[T, C, H, W]`` (crowd flows)."""
    values = climatology(obs[data_variables(obs)[0]], times, weeks)
    return values if values.ndim == 4 else values[:, None]
