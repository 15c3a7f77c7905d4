"""Supervised training of a task model (backbone + head) on labelled images: the objective of
the `finetune` stage, which teaches the task to the VFM, finetunes distilled students and runs
every baseline of task-oriented transfer.

Classification: cross-entropy with optional label smoothing on `batch["label"]`.
Segmentation: per-pixel cross-entropy on `batch["mask"]` (B, H, W), pixels equal to
`ignore_index` left out of the mean, optionally weighted per class (median frequency
balancing). With `freeze_backbone` (linear probing) the backbone runs
in inference mode (BatchNorm uses and keeps its running statistics, no dropout) and the model
stops gradients at its output; the optimizer's freeze mask keeps the weights bit-identical.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kt_jax.models.registry import InputSpec

IGNORE_INDEX = 255


def cross_entropy(logits, labels, label_smoothing: float = 0.0, weights=None):
  """Mean softmax cross-entropy against one-hot labels smoothed as optax.smooth_labels
  (1 - a on the class, a / C spread over all C classes); `weights` (same shape as labels)
  weight each term and the mean is over their sum."""
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  per_item = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
  if weights is None:
    return jnp.mean(per_item)
  weights = weights.astype(jnp.float32)
  total = jnp.sum(weights)
  return jnp.sum(per_item * weights) / jnp.where(total > 0, total, 1.0)


def pixel_cross_entropy(logits, mask, label_smoothing: float = 0.0,
                        ignore_index: int = IGNORE_INDEX, class_weights=None):
  """Per-pixel cross-entropy, (B, H, W, C) logits against a (B, H, W) int mask; pixels equal to
  `ignore_index` (or outside [0, C)) count for nothing. `class_weights` (C,): each pixel's
  term weighted by its true class's weight, the mean over the weights' sum (PyTorch's
  `cross_entropy(weight=, ignore_index=)`). Returns (loss, valid pixel count)."""
  mask = mask.astype(jnp.int32)
  valid = (mask != ignore_index) & (mask >= 0) & (mask < logits.shape[-1])
  labels = jnp.where(valid, mask, 0)
  weights = valid.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[labels]
  return cross_entropy(logits, labels, label_smoothing, weights), jnp.sum(valid)


def median_frequency_weights(pixel_counts) -> tuple[float, ...]:
  """Eigen & Fergus's (2015) median frequency balancing, as SegNet trains with: class c's
  weight is median(f) / f_c, f the classes' pixel frequencies in the labelled images (the
  median over classes that occur; an absent class gets weight 1). Why: on a task where the
  background covers 94% of the pixels, the unweighted loss is met by painting background,
  and mIoU averages the classes, not the pixels."""
  counts = np.asarray(pixel_counts, np.float64)
  freq = counts / max(counts.sum(), 1.0)
  present = freq > 0
  if not present.any():
    return tuple(1.0 for _ in counts)
  median = np.median(freq[present])
  return tuple(float(median / f) if f > 0 else 1.0 for f in freq)


@dataclasses.dataclass
class Supervised:
  model: nn.Module              # kt_jax.models.classifier.Classifier or Segmenter
  data_spec: InputSpec          # how the batches' images are normalised
  class_names: tuple[str, ...]
  segmentation: bool = False
  label_smoothing: float = 0.0
  freeze_backbone: bool = False
  ignore_index: int = IGNORE_INDEX
  dtype: Any = jnp.float32
  class_weights: tuple[float, ...] | None = None  # segmentation: per-class loss weights

  def init(self, rng, batch):
    variables = self.model.init({"params": rng, "dropout": rng}, batch["image"][:1])
    variables = dict(variables)
    params = variables.pop("params")
    return {"model": params}, ({"model": variables} if variables else {})

  def frozen(self):
    return {}

  def apply(self, params, model_state, images, train: bool, rng=None):
    """(outputs, new model_state); BatchNorm statistics move only when training the backbone."""
    variables = {"params": params["model"], **model_state.get("model", {})}
    rngs = {"dropout": rng} if rng is not None else None
    mutable = list(model_state.get("model", {})) if train else []
    if mutable:
      out, updates = self.model.apply(variables, images, train=True, mutable=mutable, rngs=rngs)
      return out, {"model": dict(updates)}
    return self.model.apply(variables, images, train=train, rngs=rngs), model_state

  def loss(self, params, model_state, frozen, batch, rng):
    del frozen
    images = batch["image"].astype(self.dtype)
    out, model_state = self.apply(params, model_state, images, not self.freeze_backbone, rng)
    logits = out["logits"]
    if self.segmentation:
      loss, _ = pixel_cross_entropy(logits, batch["mask"], self.label_smoothing,
                                    self.ignore_index, self.class_weights)
      mask = batch["mask"].astype(jnp.int32)
      valid = mask != self.ignore_index
      correct = (jnp.argmax(logits, -1) == mask) & valid
      accuracy = jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)
      return loss, ({"ce_loss": loss, "pixel_accuracy": accuracy}, model_state)
    loss = cross_entropy(logits, batch["label"], self.label_smoothing)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"ce_loss": loss, "train_top1": accuracy}, model_state)

  def predict(self, params, model_state, images, mask_hw=None):
    """Class ids: (B,) for classification, (B, H, W) for segmentation; `mask_hw`: the
    masks' (H, W) when they differ from the images', the logits bilinearly resized to it."""
    out, _ = self.apply(params, model_state, images.astype(self.dtype), train=False)
    logits = out["logits"]
    if mask_hw is not None and tuple(logits.shape[1:3]) != tuple(mask_hw):
      logits = jax.image.resize(logits, (logits.shape[0], *mask_hw, logits.shape[-1]),
                                "bilinear")
    return jnp.argmax(logits, -1)

  def feature_model(self, params, model_state):
    """The task model as saved to <workdir>/model/ (no stop-gradient: a plain model)."""
    return (self.model.clone(frozen_backbone=False),
            {"params": params["model"], **model_state.get("model", {})})

  def teacher_model(self):
    return None
