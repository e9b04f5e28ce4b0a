"""Embedded synthetic sources that look like the real thing, deterministic for a seed.

* :func:`synthetic_radar`: rain-rate sequences on a real radar grid (FMI's
  composite projection around the Vantaa radar by default). A latent Gaussian
  field with a broken power-law spectrum is advected by a smooth, slowly
  turning motion field and evolves in time with a scale-dependent lifetime
  (small features live minutes, large ones hours, as in STEPS); each frame is
  thresholded to a slowly varying wet fraction (20-50 %) and its wet pixels are
  mapped to log-normal rain rates (>= 0.1 mm h-1, peaks of tens of mm h-1).
* :func:`synthetic_traffic`: TaxiBJ-like inflow/outflow counts on a 32 × 32 km
  grid over central Beijing at 30-min slots, built from real hot spots (CBD,
  railway stations, shopping streets), commuting and leisure profiles in local
  time, weekends and Chinese public holidays, and Poisson noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np
import pandas as pd
import pyproj
import scipy.fft
import scipy.special
import xarray as xr

from nowcast.grids import Grid, beijing_grid, radar_grid
from nowcast.schema import make_dataset

log = logging.getLogger(__name__)

# Radar: spectral shape of the latent field, in the range reported for radar
# rain fields (pysteps fits two slopes with a break at a few tens of km).
SPECTRAL_SLOPES = (2.6, 3.5)  # -slope of the power spectrum above / below the break
SCALE_BREAK_KM = 32.0
LARGEST_SCALE_KM = 256.0
# Lagrangian lifetime of a feature grows with its size: ~8 min at 2 km, 2 h at
# 16 km, 5 h at 32 km (the lag-1 autocorrelations STEPS finds per cascade level).
LIFETIME_16KM_MIN = 120.0
LIFETIME_EXPONENT = 1.3
MAX_LIFETIME_MIN = 360.0
MIN_RAIN_MMH = 0.1


def synthetic_radar(
    n_times: int = 36,
    *,
    size: int = 256,
    resolution: float = 1000.0,
    start: str | pd.Timestamp = "2024-06-01T12:00",
    step: str | pd.Timedelta = "5min",
    seed: int = 0,
    grid: Grid | None = None,
) -> xr.Dataset:
    """Synthetic radar rain rates (``rainrate``, mm h-1), ``(time, y, x)``.

    Args:
        n_times: number of frames.
        size, resolution: grid of ``size`` × ``size`` cells of ``resolution``
            metres around FMI's Vantaa radar (ignored when ``grid`` is given).
        start: UTC time of the first frame; ``step``: time between frames.
        seed: the same seed gives the same sequence.
        grid: any north-up :class:`~nowcast.grids.Grid` in metres.

    The dataset attribute ``advection_velocity`` holds the mean motion
    ``(u, v)`` (m s-1, eastward, northward) over the run and domain.
    """
    grid = grid or radar_grid(size, resolution)
    ny, nx = grid.shape
    dx_km = grid.resolution[0] / 1000.0
    dt_s = pd.Timedelta(step).total_seconds()
    motion_rng, field_rng, cycle_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    # The latent field lives on a periodic domain twice the grid so that rain
    # never runs out at the inflow edge and wraps back only after it decorrelated.
    shape = (scipy.fft.next_fast_len(2 * ny), scipy.fft.next_fast_len(2 * nx))
    motion = _Motion.random(motion_rng, shape, dx_km * 1000.0, dt_s)
    filt, phi = _spectral_filter(shape, dx_km, dt_s)
    cycles = _RainCycles.random(cycle_rng)

    state = filt * _white_spectrum(field_rng, shape)
    frames = np.empty((n_times, ny, nx), dtype="f4")
    mean_velocity = np.zeros(2)
    for t in range(n_times):
        if t:
            velocity = motion.pixels_per_step(t)
            mean_velocity += velocity[:, :ny, :nx].mean(axis=(1, 2))
            latent = scipy.fft.irfft2(state, s=shape, norm="ortho")
            moved = _advect_periodic(latent, velocity)
            innovation = filt * _white_spectrum(field_rng, shape)
            state = phi * scipy.fft.rfft2(moved, norm="ortho") + np.sqrt(1 - phi**2) * innovation
        latent = scipy.fft.irfft2(state, s=shape, norm="ortho")[:ny, :nx]
        hours = t * dt_s / 3600.0
        frames[t] = _rain_rates(latent, cycles.wet_fraction(hours), *cycles.lognormal(hours))
    if n_times == 1:
        mean_velocity = motion.pixels_per_step(1)[:, :ny, :nx].mean(axis=(1, 2))
    else:
        mean_velocity /= n_times - 1
    times = pd.date_range(pd.Timestamp(start), periods=n_times, freq=pd.Timedelta(step))
    u, v = mean_velocity * grid.resolution[0] / dt_s * np.array([1.0, -1.0])
    log.debug("synthetic radar seed=%d: %d frames, motion (%.1f, %.1f) m/s", seed, n_times, u, v)
    return make_dataset(
        frames, times=times, x=grid.x, y=grid.y, crs=grid.crs, variable="rainrate",
        source=f"synthetic radar (nowcast.synthetic, seed={seed})", time_step=step,
        attrs={"advection_velocity": [round(float(u), 3), round(float(v), 3)],
               "advection_velocity_units": "m s-1 (eastward, northward)"},
    )


def _advect_periodic(field: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """One semi-Lagrangian step (backward, bicubic) on a periodic domain.

    ``pysteps.extrapolation.semilagrangian.extrapolate`` does the same with
    ``map_coordinates_mode="grid-wrap"`` but is ~40x slower per 512² step
    (scipy ``map_coordinates`` plus coordinate set-up; see
    ``bench/synthetic_advection.py``); OpenCV's ``remap`` keeps a 36-frame
    sequence under a second. Bicubic rather than bilinear so that repeated
    steps do not smooth the small scales away.
    """
    rows, cols = field.shape
    map_x = (np.arange(cols, dtype="f4")[None, :] - velocity[0]).astype("f4")
    map_y = (np.arange(rows, dtype="f4")[:, None] - velocity[1]).astype("f4")
    return cv2.remap(field.astype("f4"), map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP)


def _white_spectrum(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal real FFT of unit white noise (unit variance per coefficient)."""
    return scipy.fft.rfft2(rng.standard_normal(shape), norm="ortho")


def _spectral_filter(shape: tuple[int, int], dx_km: float, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude filter (broken power law) and per-step AR(1) coefficient per wavenumber.

    Written here rather than with ``pysteps.noise``: its filters are fitted to
    an observed field, while this one is prescribed and also carries the
    scale-dependent lifetime (STEPS-like) used to evolve the field in time.
    """
    ky = scipy.fft.fftfreq(shape[0], d=dx_km)
    kx = scipy.fft.rfftfreq(shape[1], d=dx_km)
    k = np.hypot(ky[:, None], kx[None, :])  # cycles per km
    k = np.maximum(k, 1.0 / LARGEST_SCALE_KM)
    kb = 1.0 / SCALE_BREAK_KM
    beta = np.where(k < kb, SPECTRAL_SLOPES[0], SPECTRAL_SLOPES[1])
    filt = (k / kb) ** (-beta / 2)
    filt[0, 0] = 0.0
    # Unit variance of the field: Parseval over the half spectrum.
    weights = np.full(k.shape, 2.0)
    weights[:, 0] = 1.0
    if shape[1] % 2 == 0:
        weights[:, -1] = 1.0
    filt /= np.sqrt((weights * filt**2).sum() / (shape[0] * shape[1]))
    lifetime_s = np.minimum(LIFETIME_16KM_MIN * (1.0 / (16.0 * k)) ** LIFETIME_EXPONENT, MAX_LIFETIME_MIN) * 60.0
    return filt, np.exp(-dt_s / lifetime_s)


@dataclass(frozen=True)
class _Motion:
    """Smooth motion: a mean wind that turns slowly plus a drifting periodic vortex pattern."""

    shape: tuple[int, int]
    scale: float  # metres per second -> pixels per step
    speed: float  # m s-1
    direction: float  # radians, direction the rain moves to (0 = east)
    turn_rate: float  # radians per step
    swirl: float  # vortex amplitude, fraction of speed
    phases: tuple[float, float]
    drift: float  # radians per step

    @classmethod
    def random(cls, rng: np.random.Generator, shape, dx_m: float, dt_s: float) -> "_Motion":
        steps_per_hour = 3600.0 / dt_s
        return cls(
            shape=shape,
            scale=dt_s / dx_m,
            speed=float(rng.uniform(5.0, 12.0)),
            direction=float(rng.uniform(0, 2 * np.pi)),
            turn_rate=float(np.deg2rad(rng.uniform(-5.0, 5.0)) / steps_per_hour),
            swirl=float(rng.uniform(0.1, 0.25)),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 2)),
            drift=float(rng.uniform(0.05, 0.15) / steps_per_hour),
        )

    def pixels_per_step(self, t: int) -> np.ndarray:
        """Velocity ``(2, rows, cols)`` in pixels per step, pysteps order (x right, y down)."""
        rows, cols = self.shape
        angle = self.direction + self.turn_rate * t
        px = self.speed * self.scale
        yy = 2 * np.pi * np.arange(rows)[:, None] / rows + self.phases[0] + self.drift * t
        xx = 2 * np.pi * np.arange(cols)[None, :] / cols + self.phases[1] - self.drift * t
        # Divergence-free swirl from the stream function sin(xx) sin(yy).
        u = px * (np.cos(angle) + self.swirl * np.sin(xx) * np.cos(yy))
        v_north = px * (np.sin(angle) - self.swirl * np.cos(xx) * np.sin(yy))
        return np.stack([u, -v_north])


@dataclass(frozen=True)
class _RainCycles:
    """Slow growth and decay of rain area and intensity (periods of hours)."""

    wet_mean: float
    wet_amplitude: float
    period_h: float
    phase: float
    median_mmh: float
    sigma: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "_RainCycles":
        return cls(
            wet_mean=float(rng.uniform(0.3, 0.38)),
            wet_amplitude=float(rng.uniform(0.04, 0.1)),
            period_h=float(rng.uniform(4.0, 8.0)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            median_mmh=float(rng.uniform(0.8, 1.5)),
            sigma=float(rng.uniform(0.95, 1.1)),
        )

    def _cycle(self, hours: float) -> float:
        return float(np.sin(2 * np.pi * hours / self.period_h + self.phase))

    def wet_fraction(self, hours: float) -> float:
        return float(np.clip(self.wet_mean + self.wet_amplitude * self._cycle(hours), 0.22, 0.48))

    def lognormal(self, hours: float) -> tuple[float, float]:
        """Median (mm h-1) and log-standard deviation of wet-pixel rain rates."""
        return self.median_mmh * np.exp(0.3 * self._cycle(hours)), self.sigma


def _rain_rates(latent: np.ndarray, wet_fraction: float, median: float, sigma: float) -> np.ndarray:
    """Threshold a latent field to ``wet_fraction`` and map wet pixels by rank to rain rates.

    Wet rates follow a log-normal law (``median``, ``sigma``) truncated below at
    0.1 mm h-1; dry pixels are exactly 0. The map is monotonic in the latent
    value, so rain areas keep the latent field's shape and smoothness.
    """
    flat = latent.ravel()
    n_wet = max(int(round(wet_fraction * flat.size)), 1)
    order = np.argsort(flat)[flat.size - n_wet:]
    lowest = scipy.special.ndtr((np.log(MIN_RAIN_MMH / median)) / sigma)
    quantiles = lowest + (1 - lowest) * (np.arange(n_wet) + 0.5) / n_wet
    out = np.zeros(flat.size, dtype="f4")
    out[order] = median * np.exp(sigma * scipy.special.ndtri(quantiles))
    return out.reshape(latent.shape)


# Traffic: real places inside the 32 km box around Tiananmen (lon, lat, weight).
WORK_SPOTS = {
    "Guomao CBD": (116.4610, 39.9090, 1.0),
    "Financial Street": (116.3590, 39.9160, 0.7),
    "Zhongguancun": (116.3160, 39.9830, 0.8),
    "Wangjing SOHO": (116.4800, 39.9960, 0.4),
}
LEISURE_SPOTS = {
    "Wangfujing": (116.4110, 39.9140, 0.8),
    "Sanlitun": (116.4550, 39.9370, 0.6),
    "Xidan": (116.3740, 39.9100, 0.6),
    "Qianmen": (116.3980, 39.8990, 0.5),
}
STATION_SPOTS = {
    "Beijing Railway Station": (116.4270, 39.9030, 1.0),
    "Beijing West Railway Station": (116.3220, 39.8940, 1.0),
    "Beijing South Railway Station": (116.3790, 39.8650, 0.8),
    "Beijing North Railway Station": (116.3530, 39.9440, 0.4),
}
LOCAL_TZ = "Asia/Shanghai"
TRAVEL_H = 0.5  # typical trip duration: inflow lags outflow by about a slot
# Trips per slot over the whole grid at each activity's peak; commuting to
# work and back home share one total so that inflow and outflow balance.
PEAK_TRIPS = {"work": 60000.0, "home": 60000.0, "leisure": 30000.0, "station": 15000.0, "base": 25000.0}


def synthetic_traffic(
    n_days: int = 28,
    *,
    size: int = 32,
    start: str | pd.Timestamp = "2015-03-01",
    step: str | pd.Timedelta = "30min",
    seed: int = 0,
    holidays: Iterable | None = None,
) -> xr.Dataset:
    """Synthetic TaxiBJ-like crowd flows (``crowd_flow``, counts), ``(time, flow, y, x)``.

    Args:
        n_days: number of days; each has ``1 day / step`` slots.
        size: grid of ``size`` × ``size`` 1-km cells over central Beijing.
        start: first local (Beijing) day; times are stored in UTC as the data
            model requires, so a day starts at 16:00 UTC the day before.
        step: slot length.
        seed: the same seed gives the same counts.
        holidays: local dates treated like Sundays; default: China's public
            holidays and days off from the ``holidays`` package.

    The attribute ``holidays`` lists the holidays inside the period as
    comma-separated ISO dates; ``timezone`` names the local time zone.
    """
    grid = beijing_grid(size)
    step = pd.Timedelta(step)
    local = pd.date_range(pd.Timestamp(start).normalize(), periods=int(n_days * pd.Timedelta("1D") / step),
                          freq=step, tz=LOCAL_TZ)
    days = pd.DatetimeIndex(local.normalize().unique())
    if holidays is None:
        import holidays as holiday_calendars

        calendar = holiday_calendars.country_holidays("CN", years=sorted(set(days.year)))
        holidays = calendar.keys()
    holiday_dates = sorted({pd.Timestamp(d).date() for d in holidays} & {d.date() for d in days})
    maps_rng, day_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    maps = _traffic_maps(grid, maps_rng)
    day_factor = dict(zip(days.date, np.exp(day_rng.normal(0.0, 0.06, days.size))))

    hours = np.asarray(local.hour + local.minute / 60.0 + step.total_seconds() / 7200.0)  # slot centres
    kind = np.where(local.day_of_week >= 5, "rest", "work")
    kind = np.where(np.isin(local.date, holiday_dates), "rest", kind)
    friday = np.asarray(local.day_of_week == 4) & (kind == "work")
    scale = np.array([day_factor[d] for d in local.date])
    departures = np.zeros((local.size,) + grid.shape)
    arrivals = np.zeros_like(departures)
    for name, spatial in maps.items():
        dep = _profile(name, "out", hours, kind, friday)
        arr = _profile(name, "in", hours - TRAVEL_H, kind, friday)
        departures += (scale * dep)[:, None, None] * spatial
        arrivals += (scale * arr)[:, None, None] * spatial
    counts = noise_rng.poisson(np.stack([arrivals, departures], axis=1)).astype("f4")
    log.debug("synthetic traffic seed=%d: %d slots, %d holidays", seed, local.size, len(holiday_dates))
    return make_dataset(
        counts, times=local, x=grid.x, y=grid.y, crs=grid.crs, variable="crowd_flow",
        source=f"synthetic traffic (nowcast.synthetic, seed={seed})", time_step=step,
        attrs={"holidays": ",".join(d.isoformat() for d in holiday_dates), "timezone": LOCAL_TZ},
    )


def _traffic_maps(grid: Grid, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Expected peak trips per cell for each activity (work, home, leisure, station, base)."""
    xx, yy = np.meshgrid(grid.x, grid.y)
    to_grid = pyproj.Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    cx, cy = to_grid.transform(116.3975, 39.9087)
    r_km = np.hypot(xx - cx, yy - cy) / 1000.0

    def spots(table: dict, width_km: float) -> np.ndarray:
        out = np.zeros(grid.shape)
        for lon, lat, weight in table.values():
            sx, sy = to_grid.transform(lon, lat)
            jitter = weight * np.exp(rng.normal(0.0, 0.15))
            out += jitter * np.exp(-0.5 * (np.hypot(xx - sx, yy - sy) / (width_km * 1000.0)) ** 2)
        return out

    centre = np.exp(-r_km / 8.0)
    texture = np.exp(rng.normal(0.0, 0.25, grid.shape))
    maps = {
        "work": spots(WORK_SPOTS, 1.2) + 0.15 * centre,
        "home": (np.exp(-0.5 * ((r_km - 9.0) / 4.0) ** 2) + 0.3 * centre) * texture,
        "leisure": spots(LEISURE_SPOTS, 1.0) + 0.1 * centre,
        "station": spots(STATION_SPOTS, 0.8),
        "base": centre * texture,
    }
    return {name: PEAK_TRIPS[name] * m / m.sum() for name, m in maps.items()}


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian bump in local time of day (wraps at midnight)."""
    d = (hours - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _profile(activity: str, direction: str, hours: np.ndarray, kind: np.ndarray, friday: np.ndarray) -> np.ndarray:
    """Relative trip rate (0..~1) per slot for trips leaving (``out``) or reaching (``in``) an activity.

    Workdays have commuting peaks (to work at ~8:00, home at ~18:00); rest days
    (weekends, holidays) have weak, late commuting and more leisure in the
    afternoon. Leisure visitors stay ~2.5 h, so leaving follows arriving.
    """
    rest = kind == "rest"
    awake = 0.15 + 0.85 * _bump(hours, 14.0, 5.0)
    morning = np.where(rest, 0.2 * _bump(hours, 10.0, 1.5), _bump(hours, 8.0, 0.9))
    evening = np.where(rest, 0.25 * _bump(hours, 18.5, 2.0), _bump(hours, 18.0, 1.1) * np.where(friday, 1.15, 1.0))
    if activity == "work":
        return morning if direction == "in" else evening
    if activity == "home":
        return evening if direction == "in" else morning
    if activity == "leisure":
        shifted = hours if direction == "in" else hours - 2.5
        day = 0.5 * _bump(shifted, 12.5, 2.0) + 0.6 * _bump(shifted, 19.0, 1.5)
        return day * np.where(rest, 1.7, np.where(friday, 1.3, 1.0))
    if activity == "station":
        return awake * (0.5 + 0.5 * (_bump(hours, 9.0, 2.0) + _bump(hours, 17.0, 2.5))) * np.where(rest, 1.2, 1.0)
    return awake
