"""Compact vectors: float16, int8 / uint8 scalar quantization and binary (packed sign bits).

sentence-transformers' ``quantize_embeddings`` precisions, with its layouts and (given the same
ranges) its values, so vectors made here drop into the same stores: ``int8`` / ``uint8`` map each
dimension's calibration range onto 256 levels (the level a value falls in, values outside the range
clipped); ``binary`` / ``ubinary`` keep one bit per dimension (``value > 0``), packed 8 to a byte
(``np.packbits``), stored as ``int8`` (byte - 128) or ``uint8``.

The int8 / uint8 ranges are fitted once, label-free, on the same texts as the post-processing (the
built-in calibration texts unless ``postprocess_texts`` is given): the final vectors' per-dimension
minimum and maximum. They are cached ([`ranges`][kv_embeddings_integrations.core.fitting.ranges])
and recorded in the identity (their digest), so a store filled with one set of ranges refuses
queries quantized with another.

Binary vectors are compared by Hamming distance (``hamming_scores``); for retrieval, the usual
recipe is to shortlist by Hamming distance and rescore the shortlist with float32 vectors
(``docs/results.md``, "Output precision").
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
# Precisions that need the fitted ranges, and those whose vectors are not interchangeable with
# float32 ones (the identity compares them; float16 is float32 to rounding).
SCALAR = frozenset({"int8", "uint8"})
QUANTIZED = frozenset({"int8", "uint8", "binary", "ubinary"})
DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}
MIN_TEXTS = 20


def check_precision(precision: object) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ``ValueError`` listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return str(precision)


def check_output(precision: object, normalize: bool, postprocess: bool) -> str:
    """[`check_precision`][kv_embeddings_integrations.core.outputs.quantization.check_precision],
    and int8 / uint8 only for final vectors (normalised and post-processed): the ranges are fitted
    on those, other vectors fall outside them."""
    precision = check_precision(precision)
    if precision in SCALAR and not (normalize and postprocess):
        raise ValueError(
            f"precision={precision!r} quantizes the final vectors: it needs normalize=True and postprocess=True"
        )
    return precision


def width(precision: str, dimension: int) -> int:
    """Columns of a ``dimension``-wide vector in ``precision`` (binary: ``ceil(dimension / 8)`` bytes)."""
    return -(-dimension // 8) if precision in ("binary", "ubinary") else dimension


def bytes_per_vector(precision: str, dimension: int) -> int:
    """Bytes one vector takes in ``precision``."""
    return width(precision, dimension) * np.dtype(DTYPES[check_precision(precision)]).itemsize


@dataclass(frozen=True)
class QuantizationRanges:
    """Per-dimension ``[low, high]`` of the calibration vectors, mapped onto 256 levels.

    Attributes:
        low: ``(dimension,)`` float32 minimum of each dimension.
        high: ``(dimension,)`` float32 maximum of each dimension.
    """

    low: np.ndarray
    high: np.ndarray

    @property
    def steps(self) -> np.ndarray:
        # A dimension that never varied gets a unit step instead of a division by zero.
        span = self.high - self.low
        return np.where(span > 0, span / 255.0, 1.0).astype(np.float32)

    def digest(self) -> str:
        """SHA-256 of the ranges' bytes: what the identity records."""
        data = np.ascontiguousarray(np.stack([self.low, self.high]), dtype=np.float32).tobytes()
        return hashlib.sha256(data).hexdigest()

    def levels(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, dimension)`` level indices 0..255 (float32): the level a value falls in (floor, as
        sentence-transformers), values outside the range clipped."""
        levels: np.ndarray = np.floor((np.asarray(vectors, dtype=np.float32) - self.low) / self.steps)
        clipped: np.ndarray = np.clip(levels, 0, 255).astype(np.float32)
        return clipped

    def dequantize(self, quantized: np.ndarray, precision: str) -> np.ndarray:
        """The float32 vectors int8 / uint8 ``quantized`` stand for (each level's lower edge)."""
        levels: np.ndarray = quantized.astype(np.float32) + (128.0 if precision == "int8" else 0.0)
        out: np.ndarray = (levels * self.steps + self.low).astype(np.float32)
        return out


class RangesOnDemand:
    """An embedder's int8 / uint8 ranges: fitted on first use (once, whatever the threads), or set
    from elsewhere (Ray hands its actors the driver's), and forgotten when what they cover changes.
    The fit is given at each use, not held, so the ranges never keep their embedder alive.

    Args:
        ranges: ranges already known (an unpickled embedder's), used instead of fitting.
    """

    def __init__(self, ranges: QuantizationRanges | None = None) -> None:
        self._ranges = ranges
        self._lock = threading.Lock()

    @property
    def known(self) -> QuantizationRanges | None:
        """The ranges if fitted or set already, else ``None`` (nothing is fitted)."""
        return self._ranges

    def get(self, fit: Callable[[], QuantizationRanges]) -> QuantizationRanges:
        """The ranges, fitted (or read from the cache) by ``fit`` if none are known yet."""
        with self._lock:
            if self._ranges is None:
                self._ranges = fit()
            return self._ranges

    def set(self, ranges: QuantizationRanges, dimension: int) -> None:
        if ranges.low.shape != (dimension,) or ranges.high.shape != (dimension,):
            raise ValueError(
                f"quantization ranges of shape {ranges.low.shape}, this embedder has {dimension} dimensions"
            )
        with self._lock:
            self._ranges = ranges

    def forget(self) -> None:
        with self._lock:
            self._ranges = None


def fit_ranges(vectors: np.ndarray) -> QuantizationRanges:
    """The ranges of ``(n, dimension)`` calibration vectors (the final vectors, as encode returns them)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < MIN_TEXTS:
        raise ValueError(f"quantization ranges need at least {MIN_TEXTS} vectors to fit, got shape {x.shape}")
    return QuantizationRanges(x.min(axis=0), x.max(axis=0))


def quantize(vectors: np.ndarray, precision: str, ranges: QuantizationRanges | None = None) -> np.ndarray:
    """``(n, dimension)`` float32 vectors in ``precision`` (sentence-transformers' layouts).

    Args:
        vectors: the float32 vectors (one ``(dimension,)`` vector gives one row back, unbatched).
        precision: one of ``PRECISIONS``.
        ranges: the fitted ranges; needed for ``int8`` / ``uint8``.

    Returns:
        ``float32`` / ``float16`` vectors as they are; ``int8`` (levels - 128) / ``uint8`` (levels);
        ``binary`` (``int8``, packed bits - 128) / ``ubinary`` (``uint8``, packed bits), of
        ``ceil(dimension / 8)`` columns.
    """
    precision = check_precision(precision)
    x = np.asarray(vectors, dtype=np.float32)
    if precision == "float32":
        return x
    if precision == "float16":
        return x.astype(np.float16)
    if precision in SCALAR:
        if ranges is None:
            raise ValueError(f"precision={precision!r} needs the fitted quantization ranges")
        if x.shape[-1] != ranges.low.shape[0]:
            raise ValueError(f"vectors of {x.shape[-1]} dimensions, ranges fitted for {ranges.low.shape[0]}")
        levels = ranges.levels(x)
        return (levels - 128).astype(np.int8) if precision == "int8" else levels.astype(np.uint8)
    packed = np.packbits(x > 0, axis=-1)
    return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed


def _packed_bytes(quantized: np.ndarray, precision: str) -> np.ndarray:
    """The packed bytes of ``binary`` (int8: byte - 128) or ``ubinary`` (uint8) vectors, as uint8."""
    return (quantized.astype(np.int16) + 128).astype(np.uint8) if precision == "binary" else quantized


# Set bits of each byte value.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.int32)


def unpack_bits(quantized: np.ndarray, precision: str, dimension: int) -> np.ndarray:
    """The ``(n, dimension)`` 0/1 bits of ``binary`` / ``ubinary`` vectors."""
    return np.unpackbits(_packed_bytes(quantized, precision), axis=-1, count=dimension)


def hamming_scores(queries: np.ndarray, documents: np.ndarray, precision: str = "ubinary") -> np.ndarray:
    """``(q, d)`` similarity of packed binary vectors: minus the Hamming distance (higher is closer)."""
    q = _packed_bytes(np.atleast_2d(queries), precision)
    d = _packed_bytes(np.atleast_2d(documents), precision)
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    for i, row in enumerate(q):  # one query at a time keeps memory at (d, bytes)
        out[i] = _POPCOUNT[np.bitwise_xor(row, d)].sum(axis=1)
    return -out
