"""Task-agnostic feature distillation: a student's features regress a frozen VFM's.

The baseline of task-oriented transfer (Vemulapalli et al., Figure 2 (d)): on an unlabelled
transfer set the student's class token (a CNN's pooled feature) and patch tokens (a CNN's
final feature map, flattened; resized bilinearly to the teacher's token grid when the grids
differ) pass through LayerNorm+Linear projection heads to the teacher's width and regress the
teacher's, by MSE or cosine distance. Proteus is its ViT special case with an extra masked
view (`objectives/proteus.py`); both build on `feature_regression`. Teacher and student see
the same view (the teacher's renormalised and, at another resolution, resized).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models.registry import InputSpec
from kt_jax.objectives import feature_regression, losses
from kt_jax.objectives.feature_regression import ProjectionHead, resize_tokens, token_grid


class FeatureHeads(nn.Module):
  teacher_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cls, patches):
    return (ProjectionHead(self.teacher_dim, self.dtype, name="token_head")(cls),
            ProjectionHead(self.teacher_dim, self.dtype, name="fea_head")(patches))


@dataclasses.dataclass
class FeatureDistill(feature_regression.TeacherTargets):
  student: nn.Module
  teacher: nn.Module
  teacher_variables: Any
  data_spec: InputSpec
  teacher_spec: InputSpec
  image_size: int
  teacher_image_size: int = 0   # 0: image_size
  loss_kind: str = "l2"         # a key of losses.FEATURE_LOSSES
  lambda_cls: float = 1.0
  lambda_patch: float = 1.0
  dtype: Any = jnp.float32
  target_stats: Any = None      # see feature_regression.TeacherTargets

  def __post_init__(self):
    if self.loss_kind not in losses.FEATURE_LOSSES:
      raise ValueError(f"loss_kind {self.loss_kind!r}: one of {sorted(losses.FEATURE_LOSSES)}")
    self.teacher_tokens, self.teacher_dim = token_grid(
        self.teacher, self.teacher_variables, self.teacher_image_size or self.image_size)
    self.heads = FeatureHeads(self.teacher_dim, self.dtype)

  def init(self, rng, batch):
    k_student, k_heads = jax.random.split(rng)
    images = batch["image"][:1]
    variables = dict(self.student.init(k_student, images))
    student = variables.pop("params")
    cls, patches = jax.eval_shape(lambda: self._tokens(
        self.student.apply({"params": student, **variables}, images)))
    heads = self.heads.init(k_heads, jnp.zeros(cls.shape), jnp.zeros(patches.shape))
    return ({"student": student, "heads": heads["params"]},
            {"student": variables} if variables else {})

  def frozen(self):
    return self.teacher_variables

  def _tokens(self, out):
    """The student's (class token, patch tokens on the teacher's grid)."""
    return out["x_norm_clstoken"], resize_tokens(out["x_norm_patchtokens"], self.teacher_tokens)

  def teacher_outputs(self, frozen, images) -> dict:
    """The teacher's outputs on the student's view (renormalised, resized if asked)."""
    return self.teacher.apply(frozen, feature_regression.teacher_view(
        images, self.data_spec, self.teacher_spec, self.teacher_image_size))

  def student_tokens(self, params, model_state, images, train=False, rng=None):
    variables = {"params": params["student"], **model_state.get("student", {})}
    mutable = list(model_state.get("student", {})) if train else False
    rngs = {"dropout": rng} if rng is not None else None
    out = self.student.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
    if mutable:
      out, updates = out
      model_state = {"student": dict(updates)}
    return self._tokens(out), model_state

  def loss(self, params, model_state, frozen, batch, rng):
    images = batch["image"].astype(self.dtype)
    t_cls, t_patch = jax.lax.stop_gradient(self.targets(self.teacher_outputs(frozen, images)))
    (cls, patches), model_state = self.student_tokens(params, model_state, images, True, rng)
    p_cls, p_patch = self.heads.apply({"params": params["heads"]}, cls, patches)
    distance = losses.FEATURE_LOSSES[self.loss_kind]
    terms = {"cls_loss": self.lambda_cls * distance(p_cls, t_cls),
             "patch_loss": self.lambda_patch * distance(p_patch, t_patch)}
    return terms["cls_loss"] + terms["patch_loss"], (terms, model_state)

  def ridge_heads(self, params, model_state, frozen, images, alpha: float,
                  batch_size: int = 64):
    """`params` with both heads' Linear at the ridge regression of the teacher's targets on
    the student's tokens over fixed `images` (see feature_regression.ridge_heads)."""
    # BatchNorm students in train mode (batch statistics), as the loss sees them: a random
    # CNN's init running statistics (0 and 1) give features the training never sees.
    train = bool(model_state)
    student = jax.jit(lambda x: self.student_tokens(params, model_state, x, train,
                                                    jax.random.key(0))[0])
    teacher = jax.jit(lambda x: self.targets(self.teacher_outputs(frozen, x)))
    cls, patches, t_cls, t_patches = feature_regression.token_pairs(student, teacher, images,
                                                                    batch_size)
    flat = lambda x: x.reshape(-1, x.shape[-1])
    heads = feature_regression.ridge_heads(
        params["heads"], {"token_head": (cls, t_cls),
                          "fea_head": (flat(patches), flat(t_patches))}, alpha)
    return {**params, "heads": heads}

  def feature_model(self, params, model_state):
    return self.student, {"params": params["student"], **model_state.get("student", {})}

  def teacher_model(self):
    return self.teacher, self.teacher_variables
