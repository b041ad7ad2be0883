"""Scalar codecs: SQ8 (one byte per dimension) and FP16 (two bytes per dimension).

They trade a bounded error for 4x / 2x less memory and cache space per partition. Stated errors, which the
property tests hold them to:
- SQ8: within the trained range, |decode(encode(x)) - x| <= scale / 2 per dimension (values outside the
  range are clamped to it).
- FP16: relative error <= 2**-11 per value within float16's normal range; magnitudes beyond 65504 are
  clamped to it rather than becoming inf.
"""

from __future__ import annotations

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)


def _matrix(x: np.ndarray) -> np.ndarray:
    matrix = np.asarray(x, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array [rows, dim], got shape {matrix.shape}")
    return matrix


def sq8_train(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (lo, scale) float32 [dim]: value = lo + code * scale, code in 0..255."""
    matrix = _matrix(x)
    if len(matrix) == 0:
        raise ValueError("SQ8 training needs at least one vector")
    lo = matrix.min(axis=0)
    scale = (matrix.max(axis=0).astype(np.float64) - lo) / 255.0
    return lo.astype(np.float32), scale.astype(np.float32)


def sq8_encode(x: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """uint8 codes [n, dim]. A constant dimension (scale 0) encodes as 0 and decodes to its value."""
    matrix = _matrix(x)
    safe = np.where(scale > 0, scale, np.float32(1))
    codes = np.rint((matrix - lo) / safe)
    return np.clip(codes, 0, 255).astype(np.uint8)


def sq8_decode(codes: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (lo + np.asarray(codes, dtype=np.float32) * scale).astype(np.float32)


def fp16_encode(x: np.ndarray) -> np.ndarray:
    return np.clip(_matrix(x), -FP16_MAX, FP16_MAX).astype(np.float16)


def fp16_decode(codes: np.ndarray) -> np.ndarray:
    return np.asarray(codes, dtype=np.float16).astype(np.float32)
