"""Classic nowcasting baselines that every model is scored against.

Data-model datasets in (:mod:`nowcast.schema`), forecast datasets out
(:func:`nowcast.schema.make_forecast`): lead ``k`` (1-based) is valid at
``at + k * time_step``.

* :func:`persistence`: Eulerian persistence of the frame at the issue time
  (radar and traffic; the ``flow`` dim survives);
* :func:`lagrangian_extrapolation`: pysteps optical flow plus semi-Lagrangian
  advection of the last frame (radar);
* :func:`historical_average`: mean of the same weekday and time slot over the
  previous weeks (traffic, as in the ST-ResNet/TaxiBJ papers);
* :func:`estimate_motion`: the optical-flow field, for plots and diagnostics.

:func:`motion_field` and :func:`advect` (:func:`extrapolate` for one field)
are the motion estimation and the semi-Lagrangian scheme of the Lagrangian
extrapolation, shared with the Lagrangian frame of the deep models
(:mod:`nowcast.lagrangian`).

Large grids: the optical flow's interpolation runs in chunks of about
:data:`INTERP_CHUNK_CELLS` cells and the advection one lead at a time in bands
of :data:`BAND_ROWS` rows, so temporaries stay small; the values are those of
the pysteps calls they replace (``tests/test_baselines.py`` checks it).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.schema import data_variables, make_forecast, time_step, validate

log = logging.getLogger(__name__)

# pysteps' examples transform rain rates to dBR with this fill value for dry
# pixels before optical flow and extrapolation.
DBR_ZERO = -15.0
RAIN_VARIABLES = ("rainrate", "accumulation")
#: Target cells per chunk of the Lucas-Kanade vectors' interpolation to the grid (its temporaries follow the chunk).
#: On the OPERA grid 2**15 peaks 90 MB lower than 2**17 and runs no slower (13.6 vs 16.0 s, one core).
INTERP_CHUNK_CELLS = 2**15
#: Rows per band of the semi-Lagrangian advection.
BAND_ROWS = 128


def _issue_index(obs: xr.Dataset, at) -> int:
    """Index of the issue time ``at`` (default: last time) in ``obs``."""
    times = pd.DatetimeIndex(obs["time"].values)
    if at is None:
        return times.size - 1
    stamp = pd.Timestamp(at)
    if stamp.tz is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    if stamp not in times:
        raise ValueError(
            f"issue time {stamp.isoformat()} is not in the observations, which cover "
            f"{times[0].isoformat()} .. {times[-1].isoformat()} "
            f"({times.size} times, step {obs.attrs.get('time_step')})")
    return int(times.get_loc(stamp))


def _check_leads(n_leads: int) -> None:
    if int(n_leads) != n_leads or n_leads < 1:
        raise ValueError(f"n_leads must be a positive integer, got {n_leads!r}")


def persistence(obs: xr.Dataset, n_leads: int, *, at=None) -> xr.Dataset:
    """Eulerian persistence: the frame at ``at`` (default: last time) for every lead.

    Works for every variable of the data model (rain rate, reflectivity,
    crowd flow with its ``flow`` dim); NaN stays NaN.
    """
    validate(obs, forecast=False)
    _check_leads(n_leads)
    i = _issue_index(obs, at)
    variable = data_variables(obs)[0]
    frame = obs[variable].isel(time=i).values
    # A read-only view of the one frame, not n_leads copies (200 MB on the OPERA grid).
    data = np.broadcast_to(frame, (n_leads,) + frame.shape)
    return make_forecast(data, like=obs, reference_time=obs["time"].values[i], variable=variable,
                         source="persistence")


def _input_frames(obs: xr.Dataset, at, n_input: int) -> tuple[str, int, np.ndarray]:
    """Variable name, issue index and the ``n_input`` rain frames ending at ``at``.

    The frames must be consecutive at the dataset's time step: optical flow
    over a gap would mistake the gap for slow motion.
    """
    validate(obs, forecast=False)
    variable = data_variables(obs)[0]
    if variable not in RAIN_VARIABLES:
        raise ValueError(f"optical flow needs rain rates or accumulations, got variable '{variable}'; "
                         "use persistence or historical_average for it")
    if n_input < 2:
        raise ValueError(f"optical flow needs n_input >= 2 frames, got {n_input}")
    i = _issue_index(obs, at)
    if i + 1 < n_input:
        raise ValueError(f"need {n_input} frames up to {pd.Timestamp(obs['time'].values[i]).isoformat()}, "
                         f"the observations have only {i + 1}")
    window = obs[variable].isel(time=slice(i + 1 - n_input, i + 1))
    steps = np.diff(window["time"].values)
    if not np.all(steps == time_step(obs).to_timedelta64()):
        raise ValueError(f"the {n_input} input frames ending at {pd.Timestamp(obs['time'].values[i]).isoformat()} "
                         f"are not consecutive at {obs.attrs['time_step']}: times {window['time'].values}")
    return variable, i, np.asarray(window.values)


def _to_dbr(frames: np.ndarray, threshold: float) -> np.ndarray:
    """dBR (float64) as pysteps recommends for motion estimation; dry -> -15 dBR, NaN kept.

    One field at a time, so the temporaries of pysteps' ``dB_transform`` stay one field.
    """
    from pysteps.utils.transformation import dB_transform

    frames = np.asarray(frames)
    if frames.ndim < 3:
        return dB_transform(np.asarray(frames, dtype="f8"), threshold=threshold, zerovalue=DBR_ZERO)[0]
    dbr = np.empty(frames.shape)
    for index in np.ndindex(frames.shape[:-2]):
        dbr[index] = _to_dbr(frames[index], threshold)
    return dbr


def _motion_pixels(dbr: np.ndarray, method: str) -> np.ndarray:
    """pysteps motion ``(2, rows, cols)``: columns right, rows down, pixels per step.

    NaN pixels (no radar coverage) are masked by the Lucas-Kanade feature
    detection; the other methods need finite input, so there NaN become dry.
    Lucas-Kanade interpolates its vectors to the grid in chunks of about
    :data:`INTERP_CHUNK_CELLS` cells (pysteps' ``nchunks``; the same values).
    """
    from pysteps import motion

    if method.upper() != "LK":
        dbr = np.where(np.isfinite(dbr), dbr, DBR_ZERO)
        return np.asarray(motion.get_method(method)(dbr), dtype="f8")
    side = max(2, math.ceil(math.sqrt(dbr.shape[-2] * dbr.shape[-1] / INTERP_CHUNK_CELLS)))
    velocity = motion.get_method(method)(dbr, interp_kwargs={"nchunks": side * side})
    return np.asarray(velocity, dtype="f8")


def _from_dbr(dbr: np.ndarray, threshold: float) -> np.ndarray:
    """dBR back to rates; below ``threshold`` -> 0, NaN kept."""
    threshold_db = 10.0 * np.log10(threshold)
    with np.errstate(invalid="ignore"):
        rates = np.where(dbr >= threshold_db, 10.0 ** (dbr / 10.0), 0.0)
    rates[~np.isfinite(dbr)] = np.nan
    return rates


def motion_field(frames: np.ndarray, *, method: str = "LK", threshold_mmh: float = 0.1) -> np.ndarray:
    """Optical flow ``(2, rows, cols)`` of rain frames ``[T, rows, cols]`` (mm h-1, oldest first).

    Estimated in dBR (:func:`_to_dbr`); components: columns right, rows down,
    pixels per time step (pysteps' convention).
    """
    return _motion_pixels(_to_dbr(frames, threshold_mmh), method)


def advect(rates: np.ndarray, velocity: np.ndarray, *, threshold_mmh: float = 0.1,
           backward: bool = False) -> np.ndarray:
    """Field ``k`` of ``rates [n, rows, cols]`` (mm h-1) advected ``k + 1`` time steps along ``velocity``.

    Backward semi-Lagrangian advection in dBR (:func:`semi_lagrangian`);
    ``backward=True`` goes back in time (along ``-velocity``). Back in mm h-1
    (float32) with rates below ``threshold_mmh`` set to 0; NaN where the
    trajectory starts outside the domain or at a NaN cell.
    """
    velocity = -velocity if backward else velocity
    out = np.empty(np.shape(rates), dtype="f4")
    steps = semi_lagrangian(lambda k: _to_dbr(rates[k], threshold_mmh), velocity, len(out))
    for k, field in enumerate(steps):
        out[k] = _from_dbr(field, threshold_mmh)
    return out


def extrapolate(rates: np.ndarray, velocity: np.ndarray, n_leads: int, *, threshold_mmh: float = 0.1) -> np.ndarray:
    """``rates [rows, cols]`` (mm h-1) advected 1 .. ``n_leads`` steps along ``velocity``: float32
    ``[n_leads, rows, cols]``, as :func:`advect` gives for ``n_leads`` copies of it (the dBR field made once)."""
    issue = _to_dbr(rates, threshold_mmh)
    out = np.empty((n_leads,) + issue.shape, dtype="f4")
    for k, field in enumerate(semi_lagrangian(lambda k: issue, velocity, n_leads)):
        out[k] = _from_dbr(field, threshold_mmh)
    return out


def trajectories(velocity: np.ndarray, n_steps: int) -> Iterator[np.ndarray]:
    """Per step k = 0 .. ``n_steps - 1``, the displacement ``(2, rows, cols)`` (columns, rows; cells) from
    each cell to where its value starts ``k + 1`` steps back along ``velocity``: pysteps' backward
    semi-Lagrangian trajectories (one midpoint iteration, motion interpolated bilinearly, nearest outside),
    one carried from step to step, computed in bands of :data:`BAND_ROWS` rows.

    The same array is updated and yielded at every step: copy it to keep one.
    """
    from scipy.ndimage import map_coordinates

    if not np.isfinite(velocity).any():
        raise ValueError("velocity contains only non-finite values")
    rows, cols = velocity.shape[1:]
    displacement = np.zeros((2, rows, cols))
    increment = velocity.copy()
    buffer = np.empty((2, min(BAND_ROWS, rows), cols))

    def interpolate_motion(band: slice, shift: np.ndarray) -> None:
        where = origins(band, shift, buffer)
        for c in (0, 1):
            map_coordinates(velocity[c], where, output=increment[c, band], order=1, mode="nearest",
                            prefilter=False)

    for k in range(n_steps):
        for start in range(0, rows, BAND_ROWS):
            band = slice(start, min(start + BAND_ROWS, rows))
            if k:
                interpolate_motion(band, displacement[:, band])
            interpolate_motion(band, displacement[:, band] - increment[:, band] / 2.0)
            displacement[:, band] -= increment[:, band]
        yield displacement


def origins(band: slice, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(row, column) coordinates of the cells of rows ``band`` displaced by ``shift`` (columns, rows),
    written into ``out`` (at least ``(2, band rows, cols)``)."""
    where = out[:, :band.stop - band.start]
    np.add(np.arange(band.start, band.stop)[:, None], shift[1], out=where[0])
    np.add(np.arange(shift.shape[-1]), shift[0], out=where[1])
    return where


def semi_lagrangian(field: Callable[[int], np.ndarray], velocity: np.ndarray, n_steps: int) -> Iterator[np.ndarray]:
    """``field(k)`` (2-D, float64) advected ``k + 1`` steps along ``velocity``, for k = 0 .. ``n_steps - 1``.

    pysteps' backward semi-Lagrangian scheme
    (``pysteps.extrapolation.semilagrangian.extrapolate`` with its defaults:
    one midpoint iteration, bilinear, NaN outside) with one trajectory carried
    from step to step (:func:`trajectories`), as chained one-step calls of it
    give, interpolated in bands of :data:`BAND_ROWS` rows: the same values,
    with temporaries of a band and no stack of leads.
    """
    from scipy.ndimage import map_coordinates

    rows, cols = velocity.shape[1:]
    buffer = np.empty((2, min(BAND_ROWS, rows), cols))
    for k, displacement in enumerate(trajectories(velocity, n_steps)):
        values = field(k)
        if not np.isfinite(values).any():
            raise ValueError("precip contains only non-finite values")
        advected = np.empty((rows, cols))
        for start in range(0, rows, BAND_ROWS):
            band = slice(start, min(start + BAND_ROWS, rows))
            map_coordinates(values, origins(band, displacement[:, band], buffer), output=advected[band], order=1,
                            mode="constant", cval=np.nan, prefilter=False)
        yield advected


def estimate_motion(obs: xr.Dataset, *, at=None, n_input: int = 3, method: str = "LK",
                    threshold_mmh: float = 0.1) -> xr.DataArray:
    """Optical-flow motion from the ``n_input`` frames ending at ``at``.

    Returns:
        DataArray ``(component, y, x)`` with ``component`` = ``x``, ``y``: grid
        cells per time step along the dataset's ``x`` and ``y`` coordinates
        (positive towards increasing coordinate, i.e. east and north on a
        north-up grid), with the grid's ``x``, ``y``, ``lat``, ``lon`` and ``crs``.
    """
    _, i, frames = _input_frames(obs, at, n_input)
    velocity = motion_field(frames, method=method, threshold_mmh=threshold_mmh)
    # pysteps counts rows downwards; flip to the sense of the y coordinate.
    y_sign = -1.0 if obs["y"].values[-1] < obs["y"].values[0] else 1.0
    data = np.stack([velocity[0], y_sign * velocity[1]]).astype("f4")
    coords = {name: obs.coords[name] for name in ("x", "y", "lat", "lon", "crs") if name in obs.coords}
    coords["component"] = ("component", np.array(["x", "y"]))
    coords["time"] = obs["time"].values[i]
    return xr.DataArray(
        data, dims=("component", "y", "x"), coords=coords, name="motion",
        attrs={"long_name": "optical-flow motion (grid cells per time step)", "units": "1",
               "time_step": obs.attrs["time_step"], "method": method, "n_input": n_input,
               "grid_mapping": "crs"},
    )


def lagrangian_extrapolation(obs: xr.Dataset, n_leads: int, *, at=None, n_input: int = 3,
                             motion: str = "LK", threshold_mmh: float = 0.1) -> xr.Dataset:
    """Advect the frame at ``at`` along the optical flow of the last ``n_input`` frames.

    The pysteps recipe: rain rates to dBR (below ``threshold_mmh`` -> -15 dBR),
    motion by ``pysteps.motion.get_method(motion)`` (:func:`motion_field`),
    backward semi-Lagrangian advection (:func:`advect`), back to mm h-1 with
    rates below ``threshold_mmh`` set to 0.

    NaN in the output, by design: where the trajectory starts outside the
    domain (rain that would flow in from outside is unknown) or at a pixel
    that was NaN in the issue-time frame (no radar coverage). Scores should
    mask them rather than treat them as dry.

    Returns:
        forecast dataset, same variable and units as ``obs`` (mm h-1 for
        ``rainrate``), ``source="lagrangian"``.
    """
    _check_leads(n_leads)
    variable, i, frames = _input_frames(obs, at, n_input)
    velocity = motion_field(frames, method=motion, threshold_mmh=threshold_mmh)
    rates = extrapolate(frames[-1], velocity, int(n_leads), threshold_mmh=threshold_mmh)
    speed = np.hypot(*velocity).mean()
    log.debug("lagrangian extrapolation at %s: mean speed %.2f px/step", obs["time"].values[i], speed)
    return make_forecast(rates, like=obs, reference_time=obs["time"].values[i], variable=variable,
                         source="lagrangian",
                         attrs={"motion_method": motion, "n_input": n_input, "threshold_mmh": threshold_mmh})


def historical_average(obs: xr.Dataset, n_leads: int, *, at=None, weeks: int = 4) -> xr.Dataset:
    """Mean of the same weekday and time slot over the ``weeks`` weeks before each valid time.

    Only observations up to the issue time enter (each lead's valid time minus
    1..``weeks`` weeks, all before ``at`` while the horizon is under a week).
    Missing slots are skipped; a lead with no history at all is an error.
    Keeps every dim of the variable (``flow`` for crowd flows).
    """
    validate(obs, forecast=False)
    _check_leads(n_leads)
    if weeks < 1:
        raise ValueError(f"weeks must be >= 1, got {weeks}")
    i = _issue_index(obs, at)
    variable = data_variables(obs)[0]
    issue = pd.Timestamp(obs["time"].values[i])
    step = time_step(obs)
    if n_leads * step > pd.Timedelta(weeks=1):
        raise ValueError(f"historical average needs a horizon under one week, got {n_leads} x {step}")
    valid = issue + pd.to_timedelta(np.arange(1, n_leads + 1) * step)
    lags = pd.to_timedelta(np.arange(1, weeks + 1), unit="W")
    past = obs[variable].reindex(time=(valid.values[:, None] - lags.values[None, :]).ravel())
    past = past.values.reshape((n_leads, weeks) + past.shape[1:])
    have = np.isfinite(past).reshape(n_leads, weeks, -1).any(axis=2).any(axis=1)
    if not have.all():
        first = valid[int(np.argmin(have))]
        raise ValueError(f"historical average: no observation at {first.isoformat()} minus 1..{weeks} weeks "
                         f"(observations start {pd.Timestamp(obs['time'].values[0]).isoformat()})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels missing in every week stay NaN
        mean = np.nanmean(past, axis=1)
    return make_forecast(mean.astype("f4"), like=obs, reference_time=issue, variable=variable,
                         source="historical_average", attrs={"weeks": weeks})
