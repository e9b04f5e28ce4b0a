"""Readers of real radar and crowd-flow files, one module per family, behind one registry.

Every reader is ``open_<source>(path, **options) -> xarray.Dataset`` and
returns the data model (:mod:`nowcast.schema`): one frame for a radar file,
the whole sequence for a traffic file. Bad files raise :class:`SourceError`
(a ``ValueError`` whose message names the file and the reason).

>>> from nowcast.sources import get_reader, detect
>>> ds = get_reader(detect(path))(path)

Readers are imported on first use, so listing sources stays cheap.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import xarray as xr


class SourceError(ValueError):
    """A file cannot be read as the source it was given for; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable: Dask and process workers send it back to the caller
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class Source:
    """One registered source: how to recognise its files and which function reads them."""

    name: str
    formats: str
    description: str
    reader: str  # "module:function" returning a data-model Dataset
    file_time: str | None  # "module:function" returning a file's (first) UTC time cheaply
    name_pattern: str | None  # regex matched against file names (detection, folder listing)
    sequence: bool = False  # one file holds many frames
    needs_files: bool = True

    def open(self, path: str | os.PathLike | None = None, **options) -> xr.Dataset:
        """Read ``path`` with this source's reader."""
        return _load(self.reader)(path, **options)

    def time_of(self, path: str | os.PathLike) -> pd.Timestamp:
        """The file's valid (or first) UTC time, from its name or header, without decoding data."""
        return _load(self.file_time)(path)

    def matches(self, path: str | os.PathLike) -> bool:
        return bool(self.name_pattern) and re.search(self.name_pattern, Path(path).name) is not None


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("fmi", "gzipped 8-bit PGM (.pgm.gz)",
           "FMI (Finland) radar composite, reflectivity dBZ, 1 km polar stereographic, 5 min",
           "nowcast.sources.fmi:open_fmi_pgm", "nowcast.sources.fmi:pgm_time",
           r"^\d{12}_fmi\.radar\.composite.*\.pgm(\.gz)?$"),
    Source("fmi-geotiff", "GeoTIFF (.tif)",
           "FMI (Finland) radar composite, reflectivity dBZ, 250 m ETRS-TM35FIN (EPSG:3067), 5 min",
           "nowcast.sources.fmi:open_fmi_geotiff", "nowcast.sources.fmi:geotiff_time",
           r"^\d{12}_FINUTM\.tiff?$"),
    Source("mch", "8-bit palette GIF (.gif)",
           "MeteoSwiss radar composite (AQC/CPC accumulations, RZC rates), 1 km Swiss LV03 (EPSG:21781), 5 min",
           "nowcast.sources.mch:open_mch", "nowcast.sources.mch:gif_time",
           r"^(AQC|CPC|RZC|AZC)\d{9}.*\.gif$"),
    Source("knmi", "KNMI HDF5 (.h5)",
           "KNMI (Netherlands) 5-min radar accumulation, 1 km polar stereographic",
           "nowcast.sources.knmi:open_knmi", "nowcast.sources.knmi:knmi_time",
           r"^RAD_NL\d\d_.*\d{12}\.h5$"),
    Source("bom", "NetCDF4 (.nc)",
           "Bureau of Meteorology (Australia) Rainfields 3 accumulation, 0.5 km Albers equal-area, 6 min",
           "nowcast.sources.bom:open_bom", "nowcast.sources.bom:bom_time",
           r"^\d+_\d{8}_\d{6}\.prcp-c\w+\.nc$"),
    Source("odim", "ODIM_H5 composite (.h5, .hdf)",
           "OPERA / generic ODIM_H5 composite (RATE, ACRR or DBZH) in the file's own projection",
           "nowcast.sources.odim:open_odim", "nowcast.sources.odim:odim_time",
           r"^T_PA\w\w\d\d_C_\w{4}_\d{14}\.(hdf|h5)$"),
    Source("mrms", "GRIB2 (.grib2)",
           "NOAA/NSSL MRMS PrecipRate, 0.01 deg regular lat/lon over the CONUS, 2 min",
           "nowcast.sources.mrms:open_mrms", "nowcast.sources.mrms:mrms_time",
           r"^PrecipRate_.*\d{8}-\d{6}\.grib2(\.gz)?$"),
    Source("taxibj", "ST-ResNet HDF5 (.h5: data (T, 2, H, W), date slot strings)",
           "TaxiBJ (32 x 32, 30 min), TaxiNYC and BikeNYC (16 x 8, 60 min) crowd flows",
           "nowcast.sources.taxibj:open_taxibj", "nowcast.sources.taxibj:first_time",
           r"^(BJ\d\d_M\d+x\d+_T\d+_InOut|NYC\d\d_(Taxi|Bike)_M\d+x\d+_T\d+_\w+|NYC\d\d_M\d+x\d+_T\d+_\w+)\.h5$",
           sequence=True),
    Source("synthetic-radar", "none (generated)",
           "synthetic rain-rate sequence on FMI's grid around Vantaa (nowcast.synthetic)",
           "nowcast.sources.synthetic:open_synthetic_radar", None, None, sequence=True, needs_files=False),
    Source("synthetic-traffic", "none (generated)",
           "synthetic TaxiBJ-like crowd flows over central Beijing (nowcast.synthetic)",
           "nowcast.sources.synthetic:open_synthetic_traffic", None, None, sequence=True, needs_files=False),
)}
ALIASES = {"opera": "odim", "fmi-pgm": "fmi", "taxinyc": "taxibj", "bikenyc": "taxibj"}


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def get_source(name: str) -> Source:
    """The registered source called ``name`` (or one of its aliases)."""
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return SOURCES[key]
    except KeyError:
        known = ", ".join(sorted(SOURCES) + sorted(ALIASES))
        raise ValueError(f"unknown source {name!r}; known sources: {known}") from None


def get_reader(name: str) -> Callable[..., xr.Dataset]:
    """The reader function of source ``name``: ``reader(path, **options) -> Dataset``."""
    return _load(get_source(name).reader)


# First bytes of each container format, checked when a file name says nothing.
_MAGIC = ((b"P5", "fmi"), (b"\x1f\x8b", "fmi"), (b"GIF8", "mch"), (b"II*\x00", "fmi-geotiff"),
          (b"MM\x00*", "fmi-geotiff"), (b"GRIB", "mrms"), (b"CDF\x01", "bom"), (b"CDF\x02", "bom"))


def detect(path: str | os.PathLike) -> str:
    """Name of the source that reads ``path``, from its file name or, failing that, its content.

    Raises:
        SourceError: the file cannot be opened or matches no source.
    """
    path = Path(path)
    for source in SOURCES.values():
        if source.matches(path):
            return source.name
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise SourceError(path, f"cannot open ({err.strerror or err})") from err
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"\x89HDF"):
        return _detect_hdf5(path)
    raise SourceError(path, "format not recognised as any source (see `nowcast sources`)")


def _detect_hdf5(path: Path) -> str:
    """Tell ODIM, KNMI, Rainfields (NetCDF4) and ST-ResNet HDF5 files apart by their layout."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            conventions = f.attrs.get("Conventions", b"")
            conventions = conventions.decode() if isinstance(conventions, bytes) else str(conventions)
            if conventions.startswith("ODIM"):
                return "odim"
            if "geographic" in f and "image1" in f:
                return "knmi"
            if "data" in f and "date" in f:
                return "taxibj"
            if "precipitation" in f and "proj" in f:
                return "bom"
    except OSError as err:
        raise SourceError(path, f"unreadable HDF5 file ({err})") from err
    raise SourceError(path, "HDF5 file with a layout of no known source (ODIM, KNMI, Rainfields, ST-ResNet)")


__all__ = ["SOURCES", "ALIASES", "Source", "SourceError", "detect", "get_reader", "get_source"]
