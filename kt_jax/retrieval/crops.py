"""Crop boxes, relative to the image: (top, left, bottom, right) in [0, 1].

Relative boxes are the same for every image whatever its size, so one table describes the
crops of a whole gallery and a manifest can cut a crop from the original file at load time.
"""
import math
from typing import Sequence

import numpy as np
from PIL import Image

WHOLE = (0.0, 0.0, 1.0, 1.0)


def grid_boxes(n: int) -> list[tuple[float, float, float, float]]:
  """n x n non-overlapping tiles, row by row."""
  return [(i / n, j / n, (i + 1) / n, (j + 1) / n) for i in range(n) for j in range(n)]


def scale_boxes(scale: float) -> list[tuple[float, float, float, float]]:
  """Square boxes of side `scale`, slid with a stride of half a side and the last one flush
  with the border (multi-scale crops, as for retrieval by region)."""
  if not 0 < scale < 1:
    raise ValueError(f"crop scales must be in (0, 1), got {scale}.")
  count = math.ceil((1 - scale) / (scale / 2) - 1e-9) + 1
  starts = np.linspace(0.0, 1.0 - scale, count)
  return [(float(y), float(x), float(y + scale), float(x + scale)) for y in starts
          for x in starts]


def boxes(whole: bool = True, grid: int = 0, scales: Sequence[float] = ()) -> np.ndarray:
  """The crop set: the whole image, then the grid tiles, then each scale's boxes; (C, 4)."""
  found = [WHOLE] if whole else []
  if grid > 1:
    found += grid_boxes(grid)
  for scale in scales:
    found += scale_boxes(float(scale))
  if not found:
    raise ValueError("The crop set is empty: keep the whole image or add a grid or scales.")
  return np.asarray(found, np.float32)


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
  """A relative box -> integer (top, left, bottom, right), at least one pixel each way."""
  top, left, bottom, right = (float(v) for v in box)
  y0, x0 = int(round(top * height)), int(round(left * width))
  y1, x1 = max(y0 + 1, int(round(bottom * height))), max(x0 + 1, int(round(right * width)))
  return y0, x0, min(y1, height), min(x1, width)


def cut(image: np.ndarray, box) -> np.ndarray:
  y0, x0, y1, x1 = pixel_box(box, *image.shape[:2])
  return image[y0:y1, x0:x1]


def cut_resized(image: np.ndarray, crop_boxes: np.ndarray, size: int) -> np.ndarray:
  """Every box of `image` cut and bicubic-resized to size x size: uint8 (C, size, size, 3)."""
  out = np.empty((len(crop_boxes), size, size, 3), np.uint8)
  for i, box in enumerate(crop_boxes):
    crop = cut(image, box)
    out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
  return out
