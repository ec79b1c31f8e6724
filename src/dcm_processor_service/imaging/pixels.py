"""Choosing how a volume's values are stored in 16-bit DICOM pixels.

DICOM CT and MR images store integers of at most 16 bits; the real value is
``stored * RescaleSlope + RescaleIntercept``. :func:`choose_encoding` looks at the whole
volume once (slice by slice, never making a float64 copy of it) and picks, in order:

1. **direct** - integer values that fit int16/uint16 (or uint8 when allowed) are stored
   as they are (signedness follows the data: signed when a value is negative or the
   source type is signed and the range fits int16). NIfTI ``scl_slope/scl_inter``
   on integer data become RescaleSlope/RescaleIntercept unchanged.
2. **offset** - integer values whose range spans at most 65535 are stored as
   ``value - min`` in uint16 with ``RescaleIntercept = min`` (exact).
3. **quantize** - anything else (fractions, or integers spanning more than 16 bits) is
   mapped linearly onto 0..65535: ``RescaleIntercept = min``,
   ``RescaleSlope = (max - min) / 65535`` rounded *up* to a 16-character DS, and
   ``stored = round((value - intercept) / slope)``. The error is at most slope / 2.

NaN is stored as 0 (the value 0 when representable) and +-inf as the finite max/min,
with a warning in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..dicom_values import format_ds, format_ds_at_least

__all__ = ["PixelEncoding", "choose_encoding"]

logger = logging.getLogger(__name__)

_U16_MAX = 65535


@dataclass(frozen=True)
class PixelEncoding:
    """The stored pixel format and the transform from source values to it."""

    mode: Literal["direct", "offset", "quantize"]
    dtype: np.dtype
    bits_allocated: int
    pixel_representation: int  # 0 unsigned, 1 two's complement
    rescale_slope: str  # DS text
    rescale_intercept: str  # DS text
    value_min: float  # real (rescaled) value range, for the VOI window
    value_max: float
    exact: bool  # True when every value is reproduced exactly
    # internals for encode()
    _source_slope: float = 1.0
    _source_inter: float = 0.0
    _use_real: bool = False  # encode from real (scaled, float64) values, not raw
    _offset: float = 0.0  # subtracted from the value (offset mode)
    _nan_fill: float = 0.0
    _clip: tuple[float, float] | None = None

    def encode(self, raw_slice: np.ndarray) -> np.ndarray:
        """Convert one slice of source (raw, unscaled) values to stored pixels."""
        if not self._use_real:
            if self.mode == "direct":
                return raw_slice.astype(self.dtype, copy=False)
            # offset mode on integers: exact in int64
            return (raw_slice.astype(np.int64) - int(self._offset)).astype(self.dtype)
        real = raw_slice.astype(np.float64)
        if self._source_slope != 1.0:
            real *= self._source_slope
        if self._source_inter != 0.0:
            real += self._source_inter
        real = _clean(real, self)
        if self.mode == "direct":
            return np.rint(real).astype(self.dtype)
        if self.mode == "offset":
            real = np.rint(real)
            real -= self._offset
            return real.astype(self.dtype)
        # quantize: stored = round((real - intercept) / slope), within 0..65535
        real -= float(self.rescale_intercept)
        real /= float(self.rescale_slope)
        np.rint(real, out=real)
        np.clip(real, 0, _U16_MAX, out=real)
        return real.astype(np.uint16)


def _clean(values: np.ndarray, enc: PixelEncoding) -> np.ndarray:
    """Replace NaN by the fill value and +-inf by the finite range (no copy if clean)."""
    if values.dtype.kind != "f" or enc._clip is None:
        return values
    lo, hi = enc._clip
    if np.isfinite(values).all():
        return values
    return np.nan_to_num(values, nan=enc._nan_fill, posinf=hi, neginf=lo)


@dataclass
class _Stats:
    lo: float = np.inf  # finite min / max of the real values
    hi: float = -np.inf
    integral: bool = True
    n_nan: int = 0
    n_inf: int = 0


def _scan(slices: Iterator[np.ndarray], slope: float, inter: float, is_float: bool) -> _Stats:
    stats = _Stats()
    for raw in slices:
        if is_float or slope != 1.0 or inter != 0.0:
            values = raw if (slope == 1.0 and inter == 0.0) else raw * slope + inter
            finite = np.isfinite(values)
            if not finite.all():
                stats.n_nan += int(np.isnan(values).sum())
                stats.n_inf += int((~finite).sum()) - int(np.isnan(values).sum())
                values = values[finite]
            if values.size == 0:
                continue
            stats.lo = min(stats.lo, float(values.min()))
            stats.hi = max(stats.hi, float(values.max()))
            if stats.integral and not np.array_equal(values, np.rint(values)):
                stats.integral = False
        else:
            stats.lo = min(stats.lo, float(raw.min()))
            stats.hi = max(stats.hi, float(raw.max()))
    return stats


def choose_encoding(
    slices: Callable[[], Iterator[np.ndarray]],
    raw_dtype: np.dtype,
    source_slope: float = 1.0,
    source_inter: float = 0.0,
    *,
    allow_8bit: bool = False,
) -> PixelEncoding:
    """Decide the stored format for a volume given as an iterator factory of raw slices.

    ``source_slope`` / ``source_inter`` are the NIfTI scaling (real = raw * s + b).
    """
    raw_dtype = np.dtype(raw_dtype)
    if raw_dtype.kind not in "biuf":
        raise TypeError(f"unsupported voxel data type {raw_dtype}")
    is_float = raw_dtype.kind == "f"
    scaled = source_slope != 1.0 or source_inter != 0.0
    stats = _scan(slices(), source_slope, source_inter, is_float)
    if stats.lo > stats.hi:  # no finite value at all
        stats.lo = stats.hi = 0.0
        stats.integral = True
    if stats.n_nan or stats.n_inf:
        logger.warning(
            "volume has %d NaN and %d infinite voxels - stored as 0 (NaN) and the finite "
            "min/max (inf)",
            stats.n_nan,
            stats.n_inf,
        )
    lo, hi = stats.lo, stats.hi
    clip = (lo, hi) if (is_float or scaled) else None
    nan_fill = 0.0 if lo <= 0.0 <= hi else lo
    common: dict[str, Any] = {
        "value_min": lo,
        "value_max": hi,
        "_clip": clip,
        "_nan_fill": nan_fill,
        "_source_slope": source_slope,
        "_source_inter": source_inter,
    }
    u16 = np.dtype(np.uint16)

    if not is_float and scaled:
        # Integer storage with NIfTI scaling: keep the raw integers and the scaling.
        raw_lo = (lo - source_inter) / source_slope
        raw_hi = (hi - source_inter) / source_slope
        raw_lo, raw_hi = min(raw_lo, raw_hi), max(raw_lo, raw_hi)
        fits = _fit_direct(round(raw_lo), round(raw_hi), raw_dtype.kind == "i", allow_8bit)
        if fits is not None:
            slope_text, intercept_text = format_ds(source_slope), format_ds(source_inter)
            return PixelEncoding("direct", *fits, slope_text, intercept_text, exact=True, **common)
        # wider than 16 bits: treat the real values like any other volume below
    use_real = is_float or scaled
    if stats.integral:
        prefer_signed = raw_dtype.kind == "i" or (is_float and lo < 0)
        fits = _fit_direct(int(lo), int(hi), prefer_signed, allow_8bit)
        if fits is not None:
            return PixelEncoding(
                "direct", *fits, "1", "0", exact=True, _use_real=use_real, **common
            )
        if hi - lo <= _U16_MAX:  # exact as value - min
            return PixelEncoding(
                "offset",
                u16,
                16,
                0,
                "1",
                format_ds(lo),
                exact=True,
                _use_real=use_real,
                _offset=lo,
                **common,
            )

    if hi == lo:
        slope_text, intercept_text = "1", format_ds(lo)
    else:
        slope_text = format_ds_at_least((hi - lo) / _U16_MAX)
        intercept_text = format_ds(lo)
    return PixelEncoding(
        "quantize", u16, 16, 0, slope_text, intercept_text, exact=False, _use_real=True, **common
    )


def _fit_direct(
    lo: int, hi: int, prefer_signed: bool, allow_8bit: bool
) -> tuple[np.dtype, int, int] | None:
    """Return (dtype, bits allocated, pixel representation) holding lo..hi, or None."""
    if allow_8bit and lo >= 0 and hi <= 255 and not prefer_signed:
        return np.dtype(np.uint8), 8, 0
    if prefer_signed or lo < 0:
        if lo >= -32768 and hi <= 32767:
            return np.dtype(np.int16), 16, 1
        if lo >= 0 and hi <= _U16_MAX:
            return np.dtype(np.uint16), 16, 0
        return None
    if lo >= 0 and hi <= _U16_MAX:
        return np.dtype(np.uint16), 16, 0
    return None
