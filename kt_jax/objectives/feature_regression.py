"""What every feature-regression distillation shares (Proteus and `distill_feature`).

A student's tokens, through LayerNorm+Linear projection heads, regress a frozen teacher's
tokens. Shared here: the heads, putting student-normalised images into the teacher's
normalisation, the shapes of a model's token grid, resizing a CNN's token grid to the
teacher's, the teacher's targets (optionally normalised, `target_norm`), and ridge-fitted
head initialisation. Proteus adds its masked view on top (`objectives/proteus.py`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.eval import regression
from kt_jax.models.layers import (tokens_2d, torch_default_bias_init,
                                  torch_default_kernel_init)
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import target_norm

HEAD_NORM_EPS = 1e-5  # torch's nn.LayerNorm default


class ProjectionHead(nn.Module):
  """nn.Sequential(nn.LayerNorm(d), nn.Linear(d, teacher_d)) of the official Proteus code."""
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  @tokens_2d
  def __call__(self, x):
    fan_in = x.shape[-1]
    x = nn.LayerNorm(epsilon=HEAD_NORM_EPS, dtype=self.dtype, name="norm")(x)
    # The official heads are nn.Linear at PyTorch's default init (nothing re-initialises them):
    # a third of the weight variance of flax's default, and a uniform bias.
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(fan_in), name="linear")(x)


def renormalise(x, source: InputSpec, target: InputSpec):
  """Images normalised for the student -> normalised as the teacher expects (on device)."""
  if source.mean == target.mean and source.std == target.std:
    return x
  mean_s, std_s = jnp.asarray(source.mean), jnp.asarray(source.std)
  mean_t, std_t = jnp.asarray(target.mean), jnp.asarray(target.std)
  return ((x * std_s + mean_s) - mean_t) / std_t


def teacher_view(images, source: InputSpec, target: InputSpec, size: int = 0):
  """The student's view, as the teacher wants it: the same pixels renormalised and, when the
  teacher runs at another resolution (`size` > 0), bilinearly resized (antialiased)."""
  x = renormalise(images, source, target)
  if size and size != x.shape[1]:
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear")
  return x


def token_grid(module: nn.Module, variables, image_size: int) -> tuple[int, int]:
  """(tokens, width) of a model's patch-token output, from shapes alone (no FLOPs)."""
  out = jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, image_size, image_size, 3))),
                       variables)
  return out["x_norm_patchtokens"].shape[1], out["x_norm_patchtokens"].shape[2]


def resize_tokens(tokens, count: int):
  """(B, N, D) row-major square-grid tokens -> (B, count, D) on a sqrt(count) grid, bilinear.

  How a CNN student's final feature map meets a teacher's token grid of another size.
  """
  b, n, d = tokens.shape
  if n == count:
    return tokens
  side, target = int(round(n ** 0.5)), int(round(count ** 0.5))
  if side * side != n or target * target != count:
    raise ValueError(f"Token grids of {n} and {count} tokens are not both square.")
  grid = jax.image.resize(tokens.reshape(b, side, side, d), (b, target, target, d), "linear")
  return grid.reshape(b, count, d)


class TeacherTargets:
  """The frozen teacher seen from a student's pipeline: its outputs and regression targets.

  A mixin of the objectives' dataclasses, which hold `teacher`, `teacher_variables`,
  `data_spec` (how the pipeline normalises images), `teacher_spec` (how the teacher wants
  them) and `target_stats`: {"cls": stats, "patch": stats} of `target_norm.fit`, or None
  (targets as they are; constants of the step, refitted identically on resume).
  """

  def teacher_outputs(self, frozen, images) -> dict:
    """The teacher's output dict for images normalised as the student's pipeline does."""
    return self.teacher.apply(frozen, renormalise(images, self.data_spec, self.teacher_spec))

  def targets(self, teacher_out) -> tuple[jax.Array, jax.Array]:
    """The teacher's (class token, patch tokens), normalised if the config asks for it."""
    cls, patches = teacher_out["x_norm_clstoken"], teacher_out["x_norm_patchtokens"]
    if self.target_stats is None:
      return cls, patches
    return (target_norm.normalise(self.target_stats["cls"], cls),
            target_norm.normalise(self.target_stats["patch"], patches))

  def in_teacher_space(self, cls_prediction, patch_prediction):
    """Head outputs mapped back to the teacher's own feature space (undoes `targets`)."""
    if self.target_stats is None:
      return cls_prediction, patch_prediction
    return (target_norm.denormalise(self.target_stats["cls"], cls_prediction),
            target_norm.denormalise(self.target_stats["patch"], patch_prediction))


def token_pairs(student_tokens, teacher_targets, images, batch_size: int = 64):
  """(student class tokens, student patch tokens, teacher's, teacher's) over fixed `images`,
  `batch_size` at a time: `student_tokens(x)` and `teacher_targets(x)` each return a
  (class token, patch tokens) pair (jit them). What ridge-fitted heads are fitted on."""
  out = [[], [], [], []]
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    for column, value in zip(out, (*student_tokens(x), *teacher_targets(x))):
      column.append(value)
  return tuple(jnp.concatenate(column) for column in out)


def ridge_heads(head_params: dict, inputs: dict, alpha: float) -> dict:
  """`head_params` with each named head's Linear set to the ridge regression of its targets
  on its (layer-normed) inputs: inputs = {head name: (tokens (..., D), targets (..., K))}.

  Why: a random head's predictions are far off the targets (R^2 about -1 at PyTorch's
  init), and at small scale the quickest way for the student to cut that loss is to make
  its features constant, after which it predicts the mean (measured: held-out class-token
  R^2 stays near 0, kNN falls below the random init's). Heads that start at the best
  linear read-out of the random features leave only the residual to learn.
  """
  heads = dict(head_params)
  for name, (tokens, targets) in inputs.items():
    norm = nn.LayerNorm(epsilon=HEAD_NORM_EPS).apply(
        {"params": head_params[name]["norm"]}, tokens.astype(jnp.float32))
    kernel, bias = regression.ridge_fit(norm, targets, alpha)
    heads[name] = {**head_params[name], "linear": {"kernel": jnp.asarray(kernel),
                                                    "bias": jnp.asarray(bias)}}
  return heads
