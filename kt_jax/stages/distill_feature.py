"""The `distill_feature` stage: task-agnostic distillation of a VFM's features.

The student (`student.name`, any registered ViT or CNN) regresses the teacher's class token
and patch tokens through projection heads on an unlabelled transfer set (`data.*`); see
`objectives/feature_distill.py`. Writes the student backbone to `<workdir>/model/`, which a
`finetune` stage reads as its backbone. Proteus (`stages/proteus.py`) is the ViT special case.
"""
import jax
import jax.numpy as jnp
from absl import logging

from kt_jax import convert, models
from kt_jax.data import builder
from kt_jax.errors import UserError
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import feature_distill, losses
from kt_jax.stages import checks
from kt_jax.stages.teacher import load_teacher

HEAD_INITS = ("default", "ridge")


def validate(config) -> None:
  """Everything that can be checked before the teacher is loaded (see stages.checks)."""
  checks.check_teacher_path(config.teacher.path, "teacher.path")
  checks.check_model(config.student.name, config.student.overrides, "student")
  checks.check_choice(config.compute_dtype, "compute_dtype", checks.COMPUTE_DTYPES)
  checks.check_choice(config.distill.loss, "distill.loss", tuple(losses.FEATURE_LOSSES))
  checks.check_choice(config.distill.head_init, "distill.head_init", HEAD_INITS)
  checks.check_positive(config, "image_size")
  checks.check_non_negative(config, "teacher.image_size", "distill.lambda_cls",
                            "distill.lambda_patch")
  if not config.distill.lambda_cls + config.distill.lambda_patch > 0:
    raise UserError("Set distill.lambda_cls or distill.lambda_patch above 0: nothing to learn.")
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  builder.validate(config)
  checks.check_transfer_set(config)


def _backbone(config, dtype):
  overrides = config.student.overrides.to_dict()
  if "num_classes" in checks.model_arguments(config.student.name):
    overrides.setdefault("num_classes", 0)  # features only: no ImageNet classifier
  return models.create(config.student.name, dtype=dtype, **overrides)


def build_objective(config) -> feature_distill.FeatureDistill:
  dtype = jnp.dtype(config.compute_dtype)
  teacher, teacher_vars = load_teacher(config, dtype)
  size = config.image_size
  return feature_distill.FeatureDistill(
      student=_backbone(config, dtype), teacher=teacher, teacher_variables=teacher_vars,
      data_spec=InputSpec(size, tuple(config.data.mean), tuple(config.data.std)),
      teacher_spec=convert.input_spec(config.teacher.path, config.teacher.image_size or size),
      image_size=size, teacher_image_size=config.teacher.image_size,
      loss_kind=config.distill.loss, lambda_cls=config.distill.lambda_cls,
      lambda_patch=config.distill.lambda_patch, dtype=dtype)


def make_init_hook(config, objective, images):
  """Ridge-fitted heads (`distill.head_init="ridge"`), or None."""
  if config.distill.head_init != "ridge":
    return None
  size = config.image_size
  _, model_state = jax.jit(objective.init)(
      jax.random.key(0), {"image": jnp.zeros((1, size, size, 3), jnp.float32)})
  return lambda params: objective.ridge_heads(params, model_state, objective.frozen(), images,
                                              config.distill.head_init_alpha)


def run(config, workdir: str) -> dict:
  from kt_jax.train import trainer
  objective = build_objective(config)
  stream, steps_per_epoch = builder.build_train_stream(config)
  logging.info("Transfer set: %d images (%s)", len(stream.source), config.data.source)
  fit_images = (builder.first_images(config, stream.source, config.distill.fit_images)
                if config.distill.head_init == "ridge" else None)
  last = trainer.train(config, workdir, objective, stream, steps_per_epoch,
                       init_params_hook=make_init_hook(config, objective, fit_images))
  summary = {"final_metrics": last, "transfer_images": len(stream.source),
             "bad_records": stream.bad_records(),
             "completed": bool(last.get("completed", 1.0))}
  return summary
