"""Invertible scalers between physical units and the values a network sees.

A transform maps a field (numpy array, physical units, NaN for no data) to
``float32`` values of order one and back. It is a small frozen dataclass whose
:meth:`~Transform.to_dict` is a plain ``dict`` of strings and floats, so it is
stored inside the model checkpoint (``torch.load(weights_only=True)`` safe)
and rebuilt by :func:`from_dict`.

* :class:`DBR` (rain rate, mm h-1): ``dBR = 10·log10 R``; rates below
  ``threshold`` get ``zerovalue`` dB; then scaled linearly so that the zero
  value is 0 and ``max_rate`` is 1.
* :class:`Log1p` (accumulation; counts such as crowd flow):
  ``log(1 + v) / log(1 + max_rate)``.
* :class:`MinMax` (reflectivity): ``(v - lo) / (hi - lo)``.
* :class:`Identity`.

Default per variable (:data:`DEFAULT_KIND`): dBR for rain rate and log1p for
accumulation, both on fixed physical scales (up to 200 mm h-1 or mm); log1p
for crowd flow and min–max for reflectivity, fitted on the training split
only, with the top (the value mapped to 1) a robust range, the
:data:`TOP_QUANTILE` quantile, not the single largest value: a few extreme
counts (TaxiNYC's maximum is ~95× its mean) would otherwise squash the data
towards 0. Values above the top are kept, not clipped; the inverse caps
network output at 1.5× the training maximum.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Iterable

import numpy as np

from nowcast.schema import QUANTITIES


@dataclass(frozen=True)
class Transform:
    """Base class: ``forward`` (physical → network) and ``inverse``."""

    kind: ClassVar[str] = ""

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Physical values (NaN = no data, mapped to the transform of 0) → float32."""
        raise NotImplementedError

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Network values → physical units (float32)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{"kind": ..., **parameters}`` for checkpoints and JSON."""
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Identity(Transform):
    """No scaling (NaN still becomes 0)."""

    kind: ClassVar[str] = "identity"

    def forward(self, values: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.asarray(values, dtype="f4"), nan=0.0)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype="f4")


@dataclass(frozen=True)
class DBR(Transform):
    """Rain rate (mm h-1) ↔ dBR scaled to [0, 1] (as pysteps' ``dB_transform`` plus scaling).

    Args:
        threshold: rain/no-rain threshold (mm h-1); smaller rates are dry.
        zerovalue: dBR given to dry pixels; default ``10·log10(threshold) - 5``.
        max_rate: the rate (mm h-1) that maps to 1; the inverse caps rates
            there, since dBR is exponential and an imperfect network may
            return values far above 1.
    """

    kind: ClassVar[str] = "dbr"
    threshold: float = 0.1
    zerovalue: float | None = None
    max_rate: float = 200.0

    @property
    def _zero(self) -> float:
        return 10.0 * math.log10(self.threshold) - 5.0 if self.zerovalue is None else self.zerovalue

    @property
    def _span(self) -> float:
        return 10.0 * math.log10(self.max_rate) - self._zero

    def forward(self, values: np.ndarray) -> np.ndarray:
        rate = np.nan_to_num(np.asarray(values, dtype="f4"), nan=0.0)
        wet = rate >= self.threshold
        dbr = np.full(rate.shape, self._zero, dtype="f4")
        dbr[wet] = 10.0 * np.log10(rate[wet])
        return ((dbr - self._zero) / self._span).astype("f4")

    def inverse(self, values: np.ndarray) -> np.ndarray:
        dbr = np.clip(np.asarray(values, dtype="f4"), None, 1.0) * self._span + self._zero
        rate = np.power(10.0, dbr / 10.0, dtype="f4")
        return np.where(rate >= self.threshold, rate, 0.0).astype("f4")


@dataclass(frozen=True)
class Log1p(Transform):
    """Non-negative values ↔ ``log(1 + v) / log(1 + max_rate)`` (0 at 0, 1 at ``max_rate``).

    ``max_scaled`` caps the network's output before inverting (1: at
    ``max_rate``, right for rain; :func:`fit_log1p` sets it above 1).
    """

    kind: ClassVar[str] = "log1p"
    max_rate: float = 200.0
    max_scaled: float = 1.0

    def forward(self, values: np.ndarray) -> np.ndarray:
        rate = np.clip(np.nan_to_num(np.asarray(values, dtype="f4"), nan=0.0), 0.0, None)
        return (np.log1p(rate) / math.log1p(self.max_rate)).astype("f4")

    def inverse(self, values: np.ndarray) -> np.ndarray:
        scaled = np.clip(np.asarray(values, dtype="f4"), 0.0, self.max_scaled)
        return np.expm1(scaled * math.log1p(self.max_rate)).astype("f4")


@dataclass(frozen=True)
class MinMax(Transform):
    """``(v - lo) / (hi - lo)``: [lo, hi] → [0, 1]; fit ``lo``/``hi`` on training data only.

    ``clip_min`` (e.g. 0 for counts) bounds the inverse from below;
    ``max_scaled`` bounds the network's output from above before inverting
    (:func:`fit_minmax`: 1.5× the training maximum), so that a few exploding
    cells of an imperfect network cannot dominate the scores.
    """

    kind: ClassVar[str] = "minmax"
    lo: float = 0.0
    hi: float = 1.0
    clip_min: float | None = None
    max_scaled: float = 1.5

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ValueError(f"MinMax needs hi > lo, got lo={self.lo}, hi={self.hi}")

    def forward(self, values: np.ndarray) -> np.ndarray:
        v = np.nan_to_num(np.asarray(values, dtype="f4"), nan=0.0)
        return ((v - self.lo) / (self.hi - self.lo)).astype("f4")

    def inverse(self, values: np.ndarray) -> np.ndarray:
        v = np.minimum(np.asarray(values, dtype="f4"), self.max_scaled) * (self.hi - self.lo) + self.lo
        return (v if self.clip_min is None else np.maximum(v, self.clip_min)).astype("f4")


KINDS: dict[str, type[Transform]] = {t.kind: t for t in (Identity, DBR, Log1p, MinMax)}

#: Transform kind used for each data-model quantity unless told otherwise.
DEFAULT_KIND = {"rainrate": "dbr", "accumulation": "log1p", "crowd_flow": "log1p",
                "reflectivity": "minmax"}
#: Rain keeps its fixed physical scale; log1p is fitted for other variables.
FIXED_SCALE = ("rainrate", "accumulation")
#: Fitted scalers map this quantile of the training values to 1.
TOP_QUANTILE = 0.999
#: Fitting keeps at most this many values (an even thinning of larger training splits) for the quantile.
SAMPLE_LIMIT = 2 ** 24
#: The inverse of a fitted scaler caps values at this multiple of the training maximum.
HEADROOM = 1.5


def from_dict(spec: dict[str, Any]) -> Transform:
    """Rebuild a transform from :meth:`Transform.to_dict` output."""
    spec = dict(spec)
    kind = spec.pop("kind")
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown transform kind {kind!r}; known: {sorted(KINDS)}") from None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in spec.items() if k in names})


def fit_range(batches: Iterable[np.ndarray], quantile: float = TOP_QUANTILE) -> tuple[float, float, float]:
    """``(min, quantile, max)`` of the finite values of ``batches``.

    The quantile is exact up to :data:`SAMPLE_LIMIT` values; beyond, it is
    taken on every ``2^k``-th value (a systematic sample), min and max stay exact.
    """
    lo, hi = math.inf, -math.inf
    kept: list[np.ndarray] = []
    stride, seen, stored = 1, 0, 0
    for batch in batches:
        values = np.asarray(batch, dtype="f4").ravel()
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        kept.append(values[-seen % stride::stride])
        seen += values.size
        stored += kept[-1].size
        while stored > SAMPLE_LIMIT:
            kept = [np.concatenate(kept)[::2]]
            stride, stored = 2 * stride, kept[0].size
    if not math.isfinite(lo):
        raise ValueError("cannot fit the scaling: no finite training values")
    top = hi if quantile >= 1 else float(np.quantile(np.concatenate(kept), quantile))
    return lo, top, hi


def fit_minmax(batches: Iterable[np.ndarray], *, clip_min: float | None = None,
               quantile: float = TOP_QUANTILE) -> MinMax:
    """A :class:`MinMax` from the minimum to the ``quantile`` of ``batches`` (NaN ignored).

    Pass frames of the training split only, so no validation or test value
    leaks into the scaling. ``quantile=1`` gives the plain min–max range.
    """
    lo, top, hi = fit_range(batches, quantile)
    top = top if top > lo else (hi if hi > lo else lo + 1.0)
    return MinMax(lo, top, clip_min, max(HEADROOM * (hi - lo) / (top - lo), HEADROOM))


def fit_log1p(batches: Iterable[np.ndarray], *, quantile: float = TOP_QUANTILE) -> Log1p:
    """A :class:`Log1p` whose ``max_rate`` is the ``quantile`` of ``batches`` (training split only)."""
    _, top, hi = fit_range(batches, quantile)
    top = top if top > 0 else max(hi, 1.0)
    return Log1p(top, max(math.log1p(HEADROOM * max(hi, 0.0)) / math.log1p(top), 1.0))


def make(kind: str | None, variable: str, fit_frames: Iterable[np.ndarray] | None = None) -> Transform:
    """The transform ``kind`` (default: by ``variable``), fitted on ``fit_frames`` if it needs fitting.

    Min–max is always fitted; log1p is fitted except for rain (:data:`FIXED_SCALE`).
    """
    kind = kind or DEFAULT_KIND.get(variable, "identity")
    fitted = kind == "minmax" or (kind == "log1p" and variable not in FIXED_SCALE)
    if fitted and fit_frames is None:
        raise ValueError(f"{kind} scaling of {variable} needs training frames to fit on")
    if kind == "minmax":
        quantity = QUANTITIES.get(variable)
        return fit_minmax(fit_frames, clip_min=quantity.valid_min if quantity else None)
    if fitted:
        return fit_log1p(fit_frames)
    return from_dict({"kind": kind})
