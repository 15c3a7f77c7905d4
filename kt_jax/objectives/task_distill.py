"""Task distillation: a small student learns a finetuned VFM's task predictions, no labels.

Step (b) of task-oriented knowledge transfer (Vemulapalli et al.): the teacher is the VFM
finetuned with a task head on the few labels, the student a small classifier; on unlabelled
transfer-set images the student matches the teacher's class probabilities through Hinton's
KL loss (no public code exists; the temperature is a parameter, 1 by default). Both see the
same augmented crop; the teacher is frozen and runs in the compute dtype.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models.registry import InputSpec
from kt_jax.objectives import losses
from kt_jax.objectives.proteus import renormalise


@dataclasses.dataclass
class TaskDistill:
  student: nn.Module          # a kt_jax.models.classifier.Classifier
  teacher: nn.Module          # likewise, frozen
  teacher_variables: Any
  data_spec: InputSpec
  teacher_spec: InputSpec
  temperature: float = 1.0
  dtype: Any = jnp.float32

  def init(self, rng, batch):
    variables = self.student.init(rng, batch["image"][:1])
    params = variables.pop("params")
    return {"student": params}, {"student": variables} if variables else {}

  def frozen(self):
    return self.teacher_variables

  def loss(self, params, model_state, frozen, batch, rng):
    del rng  # no stochastic layers beyond what the data pipeline did
    images = batch["image"].astype(self.dtype)
    teacher_in = renormalise(images, self.data_spec, self.teacher_spec)
    teacher_logits = jax.lax.stop_gradient(self.teacher.apply(frozen, teacher_in)["logits"])
    variables = {"params": params["student"], **model_state.get("student", {})}
    mutable = list(model_state.get("student", {}))  # BatchNorm statistics, if any
    if mutable:
      out, updates = self.student.apply(variables, images, train=True, mutable=mutable)
      model_state = {"student": dict(updates)}
    else:
      out = self.student.apply(variables, images, train=True)
    loss = losses.distillation_kl(out["logits"], teacher_logits, self.temperature)
    agree = jnp.mean(jnp.argmax(out["logits"], -1) == jnp.argmax(teacher_logits, -1))
    return loss, ({"kd_loss": loss, "teacher_agreement": agree}, model_state)

  def feature_model(self, params, model_state):
    return self.student, {"params": params["student"], **model_state.get("student", {})}

  def teacher_model(self):
    return self.teacher, self.teacher_variables
