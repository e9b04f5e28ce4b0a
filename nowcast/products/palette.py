"""Discrete colour scales shared by web-map images and maps.

The rain-rate scale uses logarithmic classes (five per decade, 0.1 to
100 mm/h, the level set STEPS and pysteps plots use) coloured from light blue
through green, yellow and red to purple, the order radar displays use. Values
below the lowest level and missing values are transparent, so a rendered image
shows only where it rains.

Use :func:`palette_for` to get the scale for a data variable and
:meth:`Palette.cmap_norm` for matplotlib (``pcolormesh(..., cmap=cmap,
norm=norm)``), or :meth:`Palette.rgba` to colour an array directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Lower bounds of the rain-rate classes (mm h-1): 10**(k/5), rounded.
RAIN_RATE_LEVELS: tuple[float, ...] = (
    0.1, 0.16, 0.25, 0.4, 0.63, 1.0, 1.6, 2.5, 4.0, 6.3, 10.0, 16.0, 25.0, 40.0, 63.0, 100.0)
# One colour per class; the last one covers everything at or above 100 mm/h.
RAIN_RATE_COLORS: tuple[str, ...] = (
    "#b4f0ff", "#78d7ff", "#3cb4ff", "#1e78f0", "#1446c8",   # drizzle to light: blues
    "#1ec83c", "#14a02d", "#0a781e",                         # moderate: greens
    "#fff03c", "#ffc81e", "#ff9614",                         # heavy: yellow to orange
    "#ff3c0a", "#d20000", "#a00050",                         # very heavy: reds
    "#d200d2", "#780096",                                    # extreme: magenta, purple
)
# Crowd flows (trips per cell and 30-min slot in TaxiBJ reach ~1300): a
# sequential yellow-orange-red scale with roughly logarithmic classes.
CROWD_FLOW_LEVELS: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 400.0, 800.0)
CROWD_FLOW_COLORS: tuple[str, ...] = (
    "#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026")


@dataclass(frozen=True)
class Palette:
    """A discrete colour scale: class ``i`` covers ``[levels[i], levels[i+1])``.

    The last class is open-ended; values below ``levels[0]`` and NaN are
    transparent.
    """

    name: str
    units: str
    label: str
    levels: tuple[float, ...]
    colors: tuple[str, ...]

    def __post_init__(self):
        if len(self.levels) != len(self.colors):
            raise ValueError(f"palette {self.name!r}: {len(self.levels)} levels but {len(self.colors)} colours")
        if not np.all(np.diff(self.levels) > 0):
            raise ValueError(f"palette {self.name!r}: levels must increase")

    def cmap_norm(self):
        """``(ListedColormap, BoundaryNorm)`` for matplotlib, colour bar ``extend="max"``."""
        from matplotlib.colors import BoundaryNorm, ListedColormap

        transparent = (0.0, 0.0, 0.0, 0.0)
        cmap = ListedColormap(self.colors, name=self.name).with_extremes(
            under=transparent, bad=transparent, over=self.colors[-1])
        norm = BoundaryNorm(self.levels, ncolors=cmap.N, extend="max")
        return cmap, norm

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """Colour ``values`` (any shape, in ``units``) as uint8 RGBA, shape ``values.shape + (4,)``."""
        cmap, norm = self.cmap_norm()
        return cmap(norm(np.ma.masked_invalid(np.asarray(values, dtype="f8"))), bytes=True)


RAIN_RATE = Palette("rain_rate", "mm h-1", "rain rate (mm/h)", RAIN_RATE_LEVELS, RAIN_RATE_COLORS)
ACCUMULATION = Palette("accumulation", "mm", "precipitation (mm)", RAIN_RATE_LEVELS, RAIN_RATE_COLORS)
CROWD_FLOW = Palette("crowd_flow", "1", "crowd flow (trips per cell)", CROWD_FLOW_LEVELS, CROWD_FLOW_COLORS)
PALETTES: dict[str, Palette] = {"rainrate": RAIN_RATE, "accumulation": ACCUMULATION, "crowd_flow": CROWD_FLOW}


def palette_for(variable: str) -> Palette:
    """The colour scale for a data-model variable (``rainrate``, ``accumulation``, ``crowd_flow``)."""
    try:
        return PALETTES[variable]
    except KeyError:
        raise ValueError(f"no colour scale for variable {variable!r}; known: {sorted(PALETTES)}") from None
