"""Metrics as small objects (WeatherBench 2 style) over the accumulators of each module.

Each metric turns aligned forecast/observed fields into *sums* (``accumulate``;
sums of many cases merge by addition) and sums into *scores* (``finalize``).
:mod:`nowcast.verification.score` runs a list of them over whole forecasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import xarray as xr

from nowcast.verification import categorical, continuous, images, probabilistic, spatial


class Metric(Protocol):
    """A verification metric: fields → mergeable sums → scores."""

    #: needs the ensemble members (else it gets the ensemble mean)
    probabilistic: bool
    #: needs whole fields (windows, spectra, frames): skipped when y/x are kept
    spatial: bool
    #: a sum variable it accumulates (its presence means the metric ran)
    produces: str

    def accumulate(self, fc: xr.DataArray, ob: xr.DataArray, dims: Sequence[str]) -> xr.Dataset: ...

    def finalize(self, sums: xr.Dataset) -> xr.Dataset: ...


@dataclass(frozen=True)
class Continuous:
    """ME, MAE, RMSE, Pearson correlation."""

    probabilistic = False
    spatial = False
    produces = "sum_error"

    def accumulate(self, fc, ob, dims):
        return continuous.error_sums(fc, ob, dims)

    def finalize(self, sums):
        return continuous.continuous_scores(sums)


@dataclass(frozen=True)
class Categorical:
    """POD, FAR, CSI, ETS, HSS and frequency bias per threshold."""

    thresholds: tuple[float, ...]
    probabilistic = False
    spatial = False
    produces = "hits"

    def accumulate(self, fc, ob, dims):
        return categorical.contingency_table(fc, ob, self.thresholds, dims)

    def finalize(self, sums):
        return categorical.categorical_scores(sums)


@dataclass(frozen=True)
class FractionsSkillScore:
    """FSS per threshold and window (edges in km and in cells)."""

    thresholds: tuple[float, ...]
    scales_km: tuple[float, ...]
    cells: tuple[int, ...]
    probabilistic = False
    spatial = True
    produces = "fss_fo"

    def accumulate(self, fc, ob, dims):
        return spatial.fss_sums(fc, ob, self.thresholds, self.scales_km, self.cells, dims)

    def finalize(self, sums):
        return spatial.fss_scores(sums)


@dataclass(frozen=True)
class PowerSpectrum:
    """Mean radially averaged power spectra of forecast and observations."""

    resolution_km: float
    probabilistic = False
    spatial = True
    produces = "psd_fc_sum"

    def accumulate(self, fc, ob, dims):
        return spatial.spectrum_sums(fc, ob, self.resolution_km, dims)

    def finalize(self, sums):
        return spatial.spectrum_scores(sums)


@dataclass(frozen=True)
class FrameScores:
    """Per-frame SSIM and PSNR (with ``data_range``) and OpenSTL's summed MSE/MAE."""

    data_range: float | None
    probabilistic = False
    spatial = True
    produces = "frames"

    def accumulate(self, fc, ob, dims):
        return images.frame_sums(fc, ob, self.data_range)

    def finalize(self, sums):
        return images.image_scores(sums)


@dataclass(frozen=True)
class CRPS:
    """Continuous ranked probability score of the ensemble."""

    probabilistic = True
    spatial = False
    produces = "crps_sum"

    def accumulate(self, fc, ob, dims):
        return probabilistic.crps_sums(fc, ob, dims)

    def finalize(self, sums):
        return probabilistic.probabilistic_scores(sums[list(probabilistic.CRPS_SUMS)])


@dataclass(frozen=True)
class RankHistogram:
    """Rank histogram; cells with observation and all members below ``x_min`` skipped."""

    x_min: float | None = None
    probabilistic = True
    spatial = False
    produces = "rank_count"

    def accumulate(self, fc, ob, dims):
        return probabilistic.rank_histogram_sums(fc, ob, dims, self.x_min)

    def finalize(self, sums):
        return probabilistic.probabilistic_scores(sums[list(probabilistic.RANK_SUMS)])


@dataclass(frozen=True)
class Reliability:
    """Reliability curve and Brier score per threshold."""

    thresholds: tuple[float, ...]
    n_bins: int = 10
    probabilistic = True
    spatial = False
    produces = "rel_count"

    def accumulate(self, fc, ob, dims):
        return probabilistic.reliability_sums(fc, ob, self.thresholds, dims, self.n_bins)

    def finalize(self, sums):
        return probabilistic.probabilistic_scores(sums[list(probabilistic.RELIABILITY_SUMS)])
