"""Task distillation: a small student learns a finetuned VFM's task predictions, no labels.

Step (b) of task-oriented knowledge transfer (Vemulapalli et al.): the teacher is the VFM
finetuned with a task head on the few labels, the student a small model with its own head of
the same kind; on unlabelled transfer-set images the student matches the teacher's class
probabilities through Hinton's KL loss with temperature (x T^2), per pixel for segmentation
logits (B, H, W, C). "Patient and consistent" function matching (Beyer et al.): teacher and
student see the same augmented, optionally mixed (mixup/CutMix between transfer images)
view; the teacher gets exactly the student's pixels, renormalised to its own statistics and,
when it runs at a higher resolution, resized. The teacher is frozen (inference mode) and runs
in the compute dtype.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.data import mixing
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import losses
from kt_jax.objectives.feature_regression import teacher_view


@dataclasses.dataclass
class TaskDistill:
  student: nn.Module          # a task model: kt_jax.models.classifier.Classifier or likewise
  teacher: nn.Module          # a task model of the same kind and class count, frozen
  teacher_variables: Any
  data_spec: InputSpec
  teacher_spec: InputSpec
  temperature: float = 1.0
  dtype: Any = jnp.float32
  teacher_image_size: int = 0  # 0: the student's; else the view is resized for the teacher
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_switch_prob: float = 0.5

  def init(self, rng, batch):
    variables = self.student.init(rng, batch["image"][:1])
    params = variables.pop("params")
    return {"student": params}, {"student": variables} if variables else {}

  def frozen(self):
    return self.teacher_variables

  def views(self, images, rng):
    """(the student's input, the teacher's input): one mixed view, the same pixels."""
    student_in = mixing.mix(rng, images.astype(self.dtype), self.mixup_alpha,
                            self.cutmix_alpha, self.mix_switch_prob)
    return student_in, teacher_view(student_in, self.data_spec, self.teacher_spec,
                                    self.teacher_image_size)

  def teacher_logits(self, frozen, teacher_in, shape):
    """The frozen teacher's logits, per-pixel ones resized to the student's logit grid."""
    logits = self.teacher.apply(frozen, teacher_in)["logits"].astype(jnp.float32)
    if logits.ndim == 4 and logits.shape[1:3] != tuple(shape[1:3]):
      logits = jax.image.resize(logits, (logits.shape[0], *shape[1:3], logits.shape[3]),
                                "linear")
    return jax.lax.stop_gradient(logits)

  def loss(self, params, model_state, frozen, batch, rng):
    k_mix, k_drop = jax.random.split(rng)
    student_in, teacher_in = self.views(batch["image"], k_mix)
    variables = {"params": params["student"], **model_state.get("student", {})}
    mutable = list(model_state.get("student", {}))  # BatchNorm statistics, if any
    rngs = {"dropout": k_drop}
    if mutable:
      out, updates = self.student.apply(variables, student_in, train=True, mutable=mutable,
                                        rngs=rngs)
      model_state = {"student": dict(updates)}
    else:
      out = self.student.apply(variables, student_in, train=True, rngs=rngs)
    teacher_logits = self.teacher_logits(frozen, teacher_in, out["logits"].shape)
    loss = losses.distillation_kl(out["logits"], teacher_logits, self.temperature)
    agree = jnp.mean(jnp.argmax(out["logits"], -1) == jnp.argmax(teacher_logits, -1))
    return loss, ({"kd_loss": loss, "teacher_agreement": agree}, model_state)

  def feature_model(self, params, model_state):
    return self.student, {"params": params["student"], **model_state.get("student", {})}

  def teacher_model(self):
    return self.teacher, self.teacher_variables
