"""How fine a feature map the digit-segmentation task needs: the best mIoU any head on a g x g
feature map can reach, bounded by an oracle that gives each g x g cell its majority label.

  python benchmarks/digit_seg_grid_oracle.py [--size 64] [--images 200]

A stride-32 CNN at 64 px has a 2x2 map (32 px: 1x1); a head on it, upsampled, paints each
cell almost uniformly, and on thin digit strokes the majority of every cell is background.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kt_jax.data import digit_segmentation as ds  # noqa: E402


def grid_oracle_miou(masks: np.ndarray, grid: int) -> tuple[float, float]:
  """(mIoU over the classes present, background IoU) of the per-cell majority prediction."""
  n, size = ds.NUM_CLASSES, masks.shape[1]
  cell = size // grid
  confusion = np.zeros((n, n), np.int64)
  for mask in masks:
    pred = np.zeros_like(mask)
    for i in range(grid):
      for j in range(grid):
        window = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
        labels = mask[window][mask[window] != ds.IGNORE]
        pred[window] = np.bincount(labels, minlength=n).argmax() if labels.size else 0
    valid = mask != ds.IGNORE
    np.add.at(confusion, (mask[valid], pred[valid]), 1)
  inter = np.diag(confusion)
  iou = inter / np.maximum(confusion.sum(0) + confusion.sum(1) - inter, 1)
  return float(iou[confusion.sum(1) > 0].mean()), float(iou[0])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--images", type=int, default=200)
  args = parser.parse_args(argv)
  _, masks, _ = ds.make_split("test", args.images, size=args.size, seed=0)
  digit = (masks > 0) & (masks != ds.IGNORE)
  print(f"{args.images} test masks at {args.size} px; digit pixels {digit.mean():.3f}")
  print("| feature map | cell | oracle mIoU | background IoU |\n|---|---|---|---|")
  grid = 1
  while grid <= args.size:
    miou, background = grid_oracle_miou(masks, grid)
    print(f"| {grid}x{grid} | {args.size // grid} px | {miou:.3f} | {background:.3f} |")
    grid *= 2


if __name__ == "__main__":
  main()
