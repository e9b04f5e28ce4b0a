"""Split a data-model dataset into labelled 2-D raster bands and name product files.

Shared by the GeoTIFF and web-map writers: both turn ``(time, [realization],
[flow], y, x)`` into files of ``(band, y, x)`` rasters, north up, with a
readable label per band and a file name per lead time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.schema import SchemaError, data_variables


@dataclass(frozen=True)
class Bands:
    """Rasters ``values`` (band, y, x), float32, north up, with one label per band.

    ``coords[i]`` maps each stacked dim (``time``, ``realization``, ``flow``)
    to its value for band ``i``, ``labels[i]`` the same as text; ``x``/``y``
    are cell centres.
    """

    values: np.ndarray
    x: np.ndarray
    y: np.ndarray
    coords: list[dict[str, object]]
    labels: list[dict[str, str]]

    def descriptions(self, default: str) -> list[str]:
        """One human-readable description per band (``default`` when a band has no label)."""
        return [", ".join(label.values()) or default for label in self.labels]


def product_variable(ds: xr.Dataset, variable: str | None = None) -> str:
    """The data variable a product shows: ``variable``, or the dataset's only one."""
    names = data_variables(ds)
    if variable is not None:
        if variable not in names:
            raise SchemaError(f"dataset has no variable {variable!r}; it has {names}")
        return variable
    if len(names) != 1:
        raise SchemaError(f"dataset has several variables {names}; pass variable=")
    return names[0]


def default_stem(ds: xr.Dataset, variable: str) -> str:
    """File-name stem: ``<variable>_<issue time>`` for forecasts, ``<variable>`` otherwise."""
    if "forecast_reference_time" in ds.coords:
        return f"{variable}_{_compact(ds['forecast_reference_time'].values)}"
    return variable


def time_label(ds: xr.Dataset, time) -> str:
    """Label of valid time ``time`` in file names: ``lead005min`` (forecasts) or the time itself."""
    if "forecast_reference_time" in ds.coords:
        return f"lead{_lead_minutes(ds, time):03d}min"
    return _compact(time)


def band_label(ds: xr.Dataset, dim: str, value) -> str:
    """Text for one band coordinate: ``+5 min (valid 2024-06-01T12:15Z)``, ``member 3``, ``inflow``."""
    if dim == "time":
        valid = f"{pd.Timestamp(value):%Y-%m-%dT%H:%MZ}"
        if "forecast_reference_time" not in ds.coords:
            return valid
        return f"+{_lead_minutes(ds, value)} min (valid {valid})"
    if dim == "realization":
        return f"member {int(value)}"
    return str(value)


def to_bands(ds: xr.Dataset, var: xr.DataArray) -> Bands:
    """Stack every dim of ``var`` except ``y``/``x`` into bands (C order), north up.

    ``ds`` is the dataset ``var`` came from (for lead times). Missing values
    stay NaN.
    """
    if not (np.diff(var["x"].values) > 0).all():
        var = var.sortby("x")
    if not (np.diff(var["y"].values) < 0).all():  # sorting a sorted grid would copy it and its lat/lon
        var = var.sortby("y", ascending=False)
    stacked_dims = [d for d in var.dims if d not in ("y", "x")]
    values = var.transpose(*stacked_dims, "y", "x").values.astype("f4")
    values = values.reshape((-1,) + values.shape[-2:])
    grids = np.meshgrid(*(var[d].values for d in stacked_dims), indexing="ij")
    coords = [{d: g.ravel()[i] for d, g in zip(stacked_dims, grids)} for i in range(values.shape[0])]
    labels = [{d: band_label(ds, d, v) for d, v in c.items()} for c in coords]
    return Bands(values, var["x"].values, var["y"].values, coords, labels)


def iso_time(time) -> str:
    """``time`` (UTC) as ISO 8601 text, e.g. ``2024-06-01T12:15:00Z``."""
    return f"{pd.Timestamp(time):%Y-%m-%dT%H:%M:%SZ}"


def _lead_minutes(ds: xr.Dataset, time) -> int:
    lead = pd.Timestamp(time) - pd.Timestamp(ds["forecast_reference_time"].values)
    return int(lead.total_seconds() // 60)


def _compact(time) -> str:
    return f"{pd.Timestamp(time):%Y%m%dT%H%MZ}"
