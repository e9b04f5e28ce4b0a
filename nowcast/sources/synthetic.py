"""The embedded synthetic sources, under the same reader interface as the real ones."""

from __future__ import annotations

import xarray as xr

from nowcast.sources import SourceError


def open_synthetic_radar(path=None, **options) -> xr.Dataset:
    """A synthetic rain-rate sequence: :func:`nowcast.synthetic.synthetic_radar` (``options`` passed on)."""
    if path is not None:
        raise SourceError(path, "the synthetic-radar source reads no files")
    from nowcast.synthetic import synthetic_radar

    return synthetic_radar(**options)


def open_synthetic_traffic(path=None, **options) -> xr.Dataset:
    """Synthetic crowd flows: :func:`nowcast.synthetic.synthetic_traffic` (``options`` passed on)."""
    if path is not None:
        raise SourceError(path, "the synthetic-traffic source reads no files")
    from nowcast.synthetic import synthetic_traffic

    return synthetic_traffic(**options)
