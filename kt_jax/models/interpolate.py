"""Bicubic resampling of position-embedding grids, matching PyTorch's `F.interpolate` exactly.

DINOv2 checkpoints were trained at one grid (37x37 for 518 px) and run at any other; how the
grid is resampled changes every output token, and the official code and transformers resample
differently (a 0.1 offset in the scale factor, antialiasing for register models). Since grid
sizes are static, we build the (out, in) resampling matrices in NumPy once per shape and apply
them as two small matmuls: exact, cheap and differentiable.
"""
import functools
import math

import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  return np.where(
      x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
      np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, scale: float | None = None,
                   antialias: bool = False) -> np.ndarray:
  """The (out_size, in_size) matrix of torch's bicubic resize along one axis.

  `scale` is the input/output coordinate ratio torch uses (1/scale_factor when a scale factor is
  given, else in/out); align_corners=False throughout, as DINOv2 and transformers use it.
  """
  scale = in_size / out_size if scale is None else scale
  out = np.zeros((out_size, in_size), np.float64)
  if antialias:
    # ATen's separable antialiased kernel (PIL-style, a=-0.5, support widened on downsampling).
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
      center = scale * (i + 0.5)
      xmin = max(int(center - support + 0.5), 0)
      xmax = min(int(center + support + 0.5), in_size)
      j = np.arange(xmin, xmax)
      w = _cubic((j - center + 0.5) * invscale, a=-0.5)
      total = w.sum()
      out[i, xmin:xmax] = w / total if total != 0 else w
    return out
  # ATen's upsample_bicubic2d: Keys kernel with a=-0.75, border indices clamped.
  for i in range(out_size):
    real = scale * (i + 0.5) - 0.5
    base = math.floor(real)
    t = real - base
    weights = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), a=-0.75)
    for k, w in enumerate(weights):
      out[i, min(max(base - 1 + k, 0), in_size - 1)] += w
  return out


def resample_grid_matrices(in_hw: tuple[int, int], out_hw: tuple[int, int], offset: float,
                           antialias: bool) -> tuple[np.ndarray, np.ndarray]:
  """Row and column matrices for resizing a grid of `in_hw` to `out_hw`.

  offset > 0 reproduces the official DINOv2 code, which asks torch for the scale factor
  (out + offset) / in rather than for the output size; offset 0 is plain size-based resizing
  (transformers, and the official code's register models).
  """
  mats = []
  for n_in, n_out in zip(in_hw, out_hw):
    scale = n_in / (n_out + offset) if offset else None
    mats.append(bicubic_matrix(n_in, n_out, scale, antialias).astype(np.float32))
  return mats[0], mats[1]


@functools.lru_cache(maxsize=64)
def bilinear_antialias_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) float32 matrix of torch's bilinear resize with antialias=True and
  align_corners=False along one axis: what SigLIP2 resizes its position grid with (written
  there as explicit weights: a triangle of half-width max(in/out, 1) around each centre)."""
  scale = in_size / out_size
  support = max(scale, 1.0)
  centre = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  weights = np.clip(1 - np.abs(np.arange(in_size)[None, :] - centre[:, None]) / support, 0, None)
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
