"""Any registered backbone plus a task head: the task models of task-oriented transfer.

Both ends of task distillation are task models: the VFM finetuned with a task head (teacher)
and the small model (student). `Classifier` puts a linear head on one named backbone output
(the normalised class token by default, the pooled feature for CNNs, whose dict uses the same
key; or "cls+mean_patch", the class token concatenated with the mean patch token, DINOv2's
linear-probe input). `Segmenter` puts a light head on the spatial output (a CNN's final
feature map, a ViT's patch-token grid; optionally with a skip connection from a CNN's finer
map) and upsamples its logits to the input's pixels.
Params: {"backbone": ..., "head": ...}; the backbone's own outputs are passed through beside
"logits" so evaluators can still read its features.

`frozen_backbone=True` stops gradients at the backbone's output (linear probing): the loss
then has no path into the backbone, so XLA drops its backward pass; the optimizer's freeze
mask is what guarantees the weights do not move.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import layers

CLS_MEAN_PATCH = "cls+mean_patch"


def pooled_feature(out: dict, feature: str):
  """The classifier's input from a backbone's output dict."""
  if feature == CLS_MEAN_PATCH:
    return jnp.concatenate([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(axis=1)], -1)
  return out[feature]


def spatial_features(out: dict, image_hw: tuple[int, int]):
  """(B, h, w, D) from a backbone's output: its `feature_map`, else its patch tokens laid out
  on the grid of the input's aspect ratio; None when the model has no spatial output."""
  if "feature_map" in out and out["feature_map"].ndim == 4:
    return out["feature_map"]
  tokens = out.get("x_norm_patchtokens")
  if tokens is None or tokens.ndim != 3 or tokens.shape[1] == 0:
    return None
  b, n, d = tokens.shape
  h = max(1, round(math.sqrt(n * image_hw[0] / image_hw[1])))
  if n % h:
    return None
  return tokens.reshape(b, h, n // h, d)


class Classifier(nn.Module):
  backbone: nn.Module
  num_classes: int
  feature: str = "x_norm_clstoken"
  frozen_backbone: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = dict(self.backbone(x, train=train))
    dtype = getattr(self.backbone, "dtype", jnp.float32)
    feature = pooled_feature(out, self.feature)
    if self.frozen_backbone:
      feature = jax.lax.stop_gradient(feature)
    logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(feature)
    out["logits"] = logits.astype(jnp.float32)
    return out


class Segmenter(nn.Module):
  """A light segmentation head on the backbone's spatial features, its logits bilinearly
  upsampled to the input size. `logits`: (B, H, W, num_classes) float32.

  - `skip_stride` 0: [3x3 conv + ReLU when `hidden` > 0] + a 1x1 linear layer on the final map
    (the "linear" head of DINOv2's segmentation evaluation, optionally one conv deeper).
  - `skip_stride` s (4, 8, ...): DeepLabv3+'s decoder (Chen et al. 2018), without ASPP. The
    final map, projected to `hidden` channels, is upsampled to the backbone's finer map at
    stride s (`layers.stride_key`), projected to `hidden` // 2 channels; both are concatenated,
    and a 3x3 conv + ReLU and the linear layer follow. Why: a stride-32 CNN sees a 64 px
    image as 2x2 features, too coarse for thin digit strokes
    (benchmarks/digit_seg_grid_oracle.py); dilating its last stages to stride 8 costs 6.5x
    the FLOPs, the skip connection almost nothing. DeepLabv3+ projects the low-level map to
    48 channels beside a 256-wide decoder and puts BatchNorm after each conv; here the
    projection is half the decoder's width, and there is no BatchNorm, so that the head has
    no batch statistics.
  """
  backbone: nn.Module
  num_classes: int
  hidden: int = 0
  frozen_backbone: bool = False
  skip_stride: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = dict(self.backbone(x, train=train))
    dtype = getattr(self.backbone, "dtype", jnp.float32)
    grid = spatial_features(out, x.shape[1:3])
    if grid is None:
      raise ValueError(f"{type(self.backbone).__name__} has no spatial output (feature_map or "
                       "x_norm_patchtokens): a segmentation head needs one.")
    if self.frozen_backbone:
      grid = jax.lax.stop_gradient(grid)
    if self.skip_stride:
      grid = self._skip_decoder_input(out, grid, dtype)
    if self.hidden:
      grid = nn.relu(nn.Conv(self.hidden, (3, 3), dtype=dtype, name="head_hidden")(grid))
    logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(grid).astype(jnp.float32)
    b, h, w = x.shape[:3]
    out["logits"] = jax.image.resize(logits, (b, h, w, self.num_classes), "bilinear")
    return out

  def _skip_decoder_input(self, out: dict, grid, dtype):
    """The final map, projected and upsampled, concatenated with the projected finer map."""
    key = layers.stride_key(self.skip_stride)
    if key not in out or self.hidden < 2:
      raise ValueError(f"skip_stride={self.skip_stride} needs a backbone with a {key} feature "
                       f"map (CNNs; found {sorted(k for k in out if k.startswith('stride_'))}) "
                       f"and hidden >= 2 (got {self.hidden}).")
    fine = jax.lax.stop_gradient(out[key]) if self.frozen_backbone else out[key]
    coarse = nn.relu(nn.Dense(self.hidden, dtype=dtype, name="head_project")(grid))
    fine = nn.relu(nn.Dense(self.hidden // 2, dtype=dtype, name="head_skip")(fine))
    coarse = jax.image.resize(coarse, (*fine.shape[:3], self.hidden), "bilinear")
    return jnp.concatenate([coarse.astype(fine.dtype), fine], axis=-1)
