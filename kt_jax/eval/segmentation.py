"""Semantic segmentation scores: a confusion matrix accumulated over batches, and mean IoU.

IoU of class c = TP / (TP + FP + FN) over every scored pixel of the split; mIoU is the mean
over the classes that occur in the ground truth or the prediction (a class absent from both
has no IoU and is left out, as mmseg's nanmean does). Pixels labelled `ignore_index` (and
padded rows of an evaluation batch) are not scored.
"""
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255, valid=None):
  """(num_classes, num_classes) int32 counts, rows = ground truth, columns = prediction;
  jit-able. `valid` (B,) False drops a whole image (eval padding)."""
  target = target.astype(jnp.int32)
  keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
  if valid is not None:
    keep = keep & valid.reshape((-1,) + (1,) * (target.ndim - 1)).astype(bool)
  index = jnp.where(keep, target * num_classes + pred.astype(jnp.int32), 0)
  counts = jnp.bincount(index.reshape(-1), weights=keep.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def iou_per_class(confusion) -> np.ndarray:
  """NaN for a class that occurs neither in the ground truth nor in the prediction."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion) -> float:
  iou = iou_per_class(confusion)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def pixel_accuracy(confusion) -> float:
  confusion = np.asarray(confusion, np.float64)
  return float(np.trace(confusion) / max(confusion.sum(), 1.0))
