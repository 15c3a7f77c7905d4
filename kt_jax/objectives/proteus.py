"""Proteus: distil a frozen foundation model into a randomly initialised ViT, without labels.

Follows the official code (BeSpontaneous/Proteus-pytorch, pretrain/models_proteus_dinov2.py):
three LayerNorm+Linear heads map student tokens to the teacher's width; the student sees the
plain crop and a masked copy in one batched call; the teacher sees the plain crop once.
  token: MSE(token_head(student CLS), teacher CLS)
  fea:   MSE([token_head(CLS), fea_head(patches)], [teacher CLS, teacher patches])
  patch: MSE(patch_head(masked-view patches), teacher patches) at the masked positions
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.eval import regression
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import feature_regression, losses, masking
# Shared with every feature-regression objective; importable from here as before.
from kt_jax.objectives.feature_regression import (HEAD_NORM_EPS, ProjectionHead,  # noqa: F401
                                                  renormalise, token_grid)


class ProteusHeads(nn.Module):
  teacher_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cls_plain, patches_plain, patches_masked):
    head = lambda name: ProjectionHead(self.teacher_dim, self.dtype, name=name)
    return head("token_head")(cls_plain), head("fea_head")(patches_plain), head("patch_head")(
        patches_masked)


@dataclasses.dataclass
class Proteus(feature_regression.TeacherTargets):
  student: nn.Module
  teacher: nn.Module
  teacher_variables: Any
  data_spec: InputSpec       # how the pipeline normalises images
  teacher_spec: InputSpec    # how the teacher wants them
  image_size: int
  lambda_token: float = 1.0
  lambda_fea: float = 1.0
  lambda_patch: float = 1.0
  mask_probability: float = 0.5
  mask_ratio: Any = 0.5
  mask_first_n: bool = True
  dtype: Any = jnp.float32
  # {"cls": stats, "patch": stats} of `target_norm.fit`, or None: targets as they are (the
  # official code). Constants of the step, refitted identically on resume.
  target_stats: Any = None

  def __post_init__(self):
    t_tokens, self.teacher_dim = token_grid(self.teacher, self.teacher_variables, self.image_size)
    s_vars = jax.eval_shape(lambda: self.student.init(
        jax.random.key(0), jnp.zeros((1, self.image_size, self.image_size, 3))))
    s_tokens, _ = token_grid(self.student, s_vars, self.image_size)
    if s_tokens != t_tokens:
      raise ValueError(
          f"At {self.image_size} px the teacher gives {t_tokens} patch tokens and the student "
          f"{s_tokens}: pick a student patch size (or image size) with the same token grid.")
    if not hasattr(self.student, "num_register_tokens"):
      raise ValueError("Proteus' masked view needs a ViT student (with a mask_token).")
    self.num_patches = s_tokens
    self.heads = ProteusHeads(self.teacher_dim, self.dtype)

  def init(self, rng, batch):
    k_student, k_heads = jax.random.split(rng)
    images = batch["image"][:1]
    student = self.student.init(k_student, images)
    s = jax.eval_shape(lambda: self.student.apply(student, images))
    cls, patches = jnp.zeros(s["x_norm_clstoken"].shape), jnp.zeros(s["x_norm_patchtokens"].shape)
    heads = self.heads.init(k_heads, cls, patches, patches)
    return {"student": student["params"], "heads": heads["params"]}, {}

  def frozen(self):
    return self.teacher_variables

  def loss(self, params, model_state, frozen, batch, rng):
    images = batch["image"].astype(self.dtype)
    b = images.shape[0]
    k_mask, k_drop = jax.random.split(rng)
    teacher = jax.lax.stop_gradient(self.teacher_outputs(frozen, images))
    masks = masking.proteus_masks(k_mask, b, self.num_patches, self.mask_probability,
                                  self.mask_ratio, self.mask_first_n)
    # Both views in one call: first half masked, second half plain (the mask of all False).
    both = self.student.apply({"params": params["student"]},
                              jnp.concatenate([images, images]),
                              jnp.concatenate([masks, jnp.zeros_like(masks)]),
                              train=True, rngs={"dropout": k_drop})
    cls_plain = both["x_norm_clstoken"][b:]
    patches_masked, patches_plain = both["x_norm_patchtokens"][:b], both["x_norm_patchtokens"][b:]
    token_out, fea_out, patch_out = self.heads.apply({"params": params["heads"]}, cls_plain,
                                                     patches_plain, patches_masked)
    t_cls, t_patch = self.targets(teacher)
    terms = losses.proteus_losses(token_out, fea_out, patch_out, t_cls, t_patch, masks)
    terms = {"token_loss": self.lambda_token * terms["token_loss"],
             "fea_loss": self.lambda_fea * terms["fea_loss"],
             "patch_loss": self.lambda_patch * terms["patch_loss"]}
    total = terms["token_loss"] + terms["fea_loss"] + terms["patch_loss"]
    # The teacher's own variance across the batch: a loss near it means the student only
    # predicts the mean so far (a diagnostic, not a loss term).
    t_cls, t_patch = t_cls.astype(jnp.float32), t_patch.astype(jnp.float32)
    metrics = dict(terms, masked_share=jnp.mean(masks),
                   teacher_cls_var=jnp.mean(jnp.var(t_cls, axis=0)),
                   teacher_patch_var=jnp.mean(jnp.var(t_patch.reshape(-1, t_patch.shape[-1]),
                                                      axis=0)))
    return total, (metrics, model_state)

  def held_out_r2(self, params, frozen, images) -> dict:
    """R^2 of the student's head outputs against the teacher on plain (unmasked) views.

    `cls_r2` scores token_head(CLS) against the teacher's class token, `patch_r2`
    fea_head(patch tokens) against its patch tokens; on images the student never trained
    on, they say whether it learnt the teacher's function or only its mean (R^2 near 0).
    """
    images = images.astype(self.dtype)
    teacher = self.teacher_outputs(frozen, images)
    student = self.student.apply({"params": params["student"]}, images)
    token_out, fea_out, _ = self.heads.apply(
        {"params": params["heads"]}, student["x_norm_clstoken"],
        student["x_norm_patchtokens"], student["x_norm_patchtokens"])
    token_out, fea_out = self.in_teacher_space(token_out, fea_out)  # R^2 in the teacher's space
    return {"cls_r2": regression.r_squared(token_out, teacher["x_norm_clstoken"]),
            "patch_r2": regression.r_squared(fea_out, teacher["x_norm_patchtokens"])}

  def ridge_heads(self, params, frozen, images, alpha: float, batch_size: int = 64):
    """`params` with each head's Linear set to the ridge regression of the teacher's targets
    on the student's (layer-normed) tokens, over fixed `images`; the student is untouched.

    Why: a random head's predictions are far off the targets (R^2 about -1 at PyTorch's
    init), and at small scale the quickest way for the student to cut that loss is to make
    its features constant, after which it predicts the mean (measured: held-out class-token
    R^2 stays near 0, kNN falls below the random init's). Heads that start at the best
    linear read-out of the random features leave only the residual to learn. An option of
    ours (`proteus.head_init="ridge"`), not in the official code.
    """
    student = jax.jit(lambda x: _cls_and_patches(
        self.student.apply({"params": params["student"]}, x)))
    teacher = jax.jit(lambda x: self.targets(self.teacher_outputs(frozen, x)))
    cls, patches, t_cls, t_patches = feature_regression.token_pairs(student, teacher, images,
                                                                    batch_size)
    flat = lambda x: x.reshape(-1, x.shape[-1])
    inputs = {"token_head": (cls, t_cls), "fea_head": (flat(patches), flat(t_patches)),
              "patch_head": (flat(patches), flat(t_patches))}
    heads = feature_regression.ridge_heads(params["heads"], inputs, alpha)
    return {**params, "heads": heads}

  def feature_model(self, params, model_state):
    return self.student, {"params": params["student"]}

  def teacher_model(self):
    return self.teacher, self.teacher_variables


def _cls_and_patches(out: dict):
  return out["x_norm_clstoken"], out["x_norm_patchtokens"]
