"""A PNG grid of k-NN retrievals: each row is a query followed by its nearest neighbours.

Seeing what a feature space calls "near" catches failures an accuracy number hides (colour
or background shortcuts). Neighbours get a green border when their label equals the query's
and red otherwise. Drawing goes through the Agg canvas directly, so no pyplot state or GUI
backend is involved, and every cell is exactly `cell_pixels` square: the PNG is
(1 + k) * cell_pixels wide and num_queries * cell_pixels high.
"""
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

CORRECT, WRONG, QUERY, UNLABELLED = "#00c000", "#e00000", "#3060e0", "#808080"


def _border_colour(column: int, query_label, neighbour_label) -> str:
  if column == 0:
    return QUERY
  if query_label is None or neighbour_label is None:
    return UNLABELLED
  return CORRECT if query_label == neighbour_label else WRONG


def _draw_cell(fig: Figure, image: np.ndarray, row: int, column: int, shape: tuple[int, int],
               colour: str, text: str | None, border_px: float) -> None:
  """A cell filled with `colour`, the image inset by `border_px`: borders never overlap."""
  rows, columns = shape
  x, y, w, h = column / columns, 1 - (row + 1) / rows, 1 / columns, 1 / rows
  fig.add_artist(Rectangle((x, y), w, h, transform=fig.transFigure, facecolor=colour,
                           edgecolor="none", zorder=-1))
  dx, dy = border_px / fig.bbox.width, border_px / fig.bbox.height
  ax = fig.add_axes((x + dx, y + dy, w - 2 * dx, h - 2 * dy))
  ax.set_axis_off()
  image = np.asarray(image)
  ax.imshow(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image,
            cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
  if text is not None:
    ax.text(0.04, 0.04, text, transform=ax.transAxes, fontsize=7, va="bottom",
            bbox=dict(facecolor="white", alpha=0.7, pad=1, linewidth=0))


def _label(labels, index: int, class_names: Sequence[str] | None):
  if labels is None:
    return None
  label = np.asarray(labels)[index].item()
  return class_names[label] if class_names is not None else label


def save_neighbour_sheet(query_images, bank_images, neighbour_indices, path: str,
                         query_labels=None, bank_labels=None,
                         class_names: Sequence[str] | None = None, cell_pixels: int = 96,
                         border_px: float = 6.0) -> str:
  """Writes the sheet to `path` (PNG) and returns the path.

  query_images: uint8 (Q, H, W[, C]) images; bank_images: (N, H', W'[, C]); neighbour_indices:
  (Q, k) rows into the bank, e.g. from `knn.nearest_neighbours`. Labels, when given, colour
  the neighbour borders and are printed in each cell (as `class_names[label]` if given).
  """
  neighbour_indices = np.asarray(neighbour_indices)
  shape = (neighbour_indices.shape[0], neighbour_indices.shape[1] + 1)
  # One inch per cell at dpi = cell_pixels: the pixel size is exact, with no rounding.
  fig = Figure(figsize=(shape[1], shape[0]), dpi=cell_pixels, facecolor="white")
  for row, neighbours in enumerate(neighbour_indices):
    query_label = _label(query_labels, row, None)
    cells = [(query_images[row], query_label, _label(query_labels, row, class_names))]
    cells += [(bank_images[j], _label(bank_labels, j, None), _label(bank_labels, j, class_names))
              for j in neighbours]
    for column, (image, label, text) in enumerate(cells):
      colour = _border_colour(column, query_label, label)
      _draw_cell(fig, image, row, column, shape, colour, None if text is None else str(text),
                 border_px)
  FigureCanvasAgg(fig).print_png(path)
  return path


def save_image_grid(rows, path: str, cell_pixels: int = 64, border_px: float = 1.0,
                    labels: Sequence[str] | None = None) -> str:
  """Writes a grid of images (R, C, H, W, 3) uint8 as a PNG, e.g. inputs beside their
  reconstructions (one pair per row) or samples; `labels` captions the first row's cells."""
  rows = np.asarray(rows)
  shape = rows.shape[:2]
  fig = Figure(figsize=(shape[1], shape[0]), dpi=cell_pixels, facecolor="white")
  for r in range(shape[0]):
    for c in range(shape[1]):
      text = labels[c] if labels is not None and r == 0 else None
      _draw_cell(fig, rows[r, c], r, c, shape, "white", text, border_px)
  FigureCanvasAgg(fig).print_png(path)
  return path
