"""Builds the task-distillation objective from a config (the stage around it comes with the
VFM-finetuning step of task-oriented transfer; until then only `random:` teachers, for
benchmarks, can be built)."""
import jax
import jax.numpy as jnp

from kt_jax import convert, models
from kt_jax.models.classifier import Classifier
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import task_distill
from kt_jax.stages.proteus import load_teacher


def build_objective(config) -> task_distill.TaskDistill:
  if not config.teacher.path.startswith("random:"):
    raise ValueError(
        "task distillation needs a teacher classifier finetuned on the task; kt_jax cannot "
        "produce or import one yet, so only random:<model> teachers (benchmarks) are accepted.")
  dtype = jnp.dtype(config.compute_dtype)
  backbone, backbone_vars = load_teacher(config, dtype)
  n = config.teacher.num_classes
  teacher = Classifier(backbone, n)
  size = config.image_size
  shapes = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  head = jax.tree.map(lambda s: jnp.zeros(s.shape, dtype), shapes["params"]["head"])
  # The random teacher's head: small random logits, so the loss is not trivially constant.
  head["kernel"] = 0.02 * jax.random.normal(jax.random.key(config.seed + 1),
                                            head["kernel"].shape, dtype)
  teacher_vars = {"params": {"backbone": backbone_vars["params"], "head": head},
                  **{k: {"backbone": v} for k, v in backbone_vars.items() if k != "params"}}
  student = Classifier(models.create(config.student.name, dtype=dtype,
                                     **config.student.overrides.to_dict()), n)
  return task_distill.TaskDistill(
      student=student, teacher=teacher, teacher_variables=teacher_vars,
      data_spec=InputSpec(size, tuple(config.data.mean), tuple(config.data.std)),
      teacher_spec=convert.input_spec(config.teacher.path, size),
      temperature=config.task_distill.temperature, dtype=dtype)
