"""The `distill_task` stage: a finetuned VFM teaches its task to a small student, no labels.

`teacher.path` is a task model (a `finetune` stage's `model/`: backbone + head, e.g.
`{stage:finetune_vfm}/model`); the student is `student.name` wrapped in the teacher's kind of
head (the teacher's wrapper with the student's backbone), so classification and per-pixel
segmentation heads distil alike. The transfer set is `data.*` (the shipped natural-image
pool, unlabelled MNIST digits, or a folder); labels, if any, are never read. Writes the
student with its head to `<workdir>/model/`, which `finetune` reads as its backbone.
"""
import jax
import jax.numpy as jnp
from absl import logging

from kt_jax import convert, paths
from kt_jax.data import builder
from kt_jax.errors import UserError
from kt_jax.models.classifier import Classifier
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import task_distill
from kt_jax.stages import checks
from kt_jax.stages.backbone import backbone_hooks, load_backbone
from kt_jax.stages.teacher import cast, load_teacher


def validate(config) -> None:
  """Everything that can be checked before the teacher is loaded (see stages.checks)."""
  checks.check_teacher_path(config.teacher.path, "teacher.path")
  checks.check_model_source(config.student, "student")
  checks.check_choice(config.compute_dtype, "compute_dtype", checks.COMPUTE_DTYPES)
  checks.check_positive(config, "image_size", "distill.temperature")
  checks.check_non_negative(config, "teacher.image_size", "distill.mixup_alpha",
                            "distill.cutmix_alpha", "student.num_classes")
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  checks.check_head_classes(config)
  builder.validate(config)
  checks.check_transfer_set(config)


def _random_teacher(config, dtype):
  """`random:<model>` + `teacher.num_classes`: a random classifier, for benchmarks only."""
  backbone, backbone_vars = load_teacher(config, dtype)
  n = config.teacher.num_classes
  teacher = Classifier(backbone, n)
  size = config.teacher.image_size or config.image_size
  shapes = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  head = jax.tree.map(lambda s: jnp.zeros(s.shape, dtype), shapes["params"]["head"])
  # Small random logits, so the loss is not trivially constant.
  head["kernel"] = 0.02 * jax.random.normal(jax.random.key(config.seed + 1),
                                            head["kernel"].shape, dtype)
  variables = {"params": {"backbone": backbone_vars["params"], "head": head},
               **{k: {"backbone": v} for k, v in backbone_vars.items() if k != "params"}}
  return teacher, variables


def build_objective(config) -> task_distill.TaskDistill:
  return build_objective_and_student(config)[0]


def build_objective_and_student(config) -> tuple[task_distill.TaskDistill, dict | None]:
  """The objective, and the loaded student backbone's variables (None: from the seed)."""
  dtype = jnp.dtype(config.compute_dtype)
  if config.teacher.path.startswith("random:"):
    teacher, teacher_vars = _random_teacher(config, dtype)
  else:
    teacher, teacher_vars = cast(*convert.load_pretrained(config.teacher.path), dtype)
  if not hasattr(teacher, "backbone") or not hasattr(teacher, "num_classes"):
    raise UserError(f"teacher.path={config.teacher.path} has no task head: distil from a "
                    "`finetune` stage's model/ (e.g. \"{stage:finetune_vfm}/model\").")
  # The teacher's kind of head (and its options) on the student's backbone, trainable.
  # A model's own ImageNet classifier is dropped; a loaded student's weights go in at init.
  backbone = load_backbone(config, dtype, key="student")
  if backbone.variables is not None and (tuple(backbone.spec.mean), tuple(backbone.spec.std)) \
      != (tuple(config.data.mean), tuple(config.data.std)):
    logging.warning("student.path=%s was trained on images normalised with mean %s, std %s; "
                    "this run feeds it data.mean=%s, data.std=%s.", config.student.path,
                    backbone.spec.mean, backbone.spec.std, tuple(config.data.mean),
                    tuple(config.data.std))
  changes = {"backbone": backbone.module}
  if getattr(teacher, "frozen_backbone", False):
    changes["frozen_backbone"] = False
  student = teacher.clone(**changes)
  size = config.image_size
  objective = task_distill.TaskDistill(
      student=student, teacher=teacher, teacher_variables=teacher_vars,
      data_spec=InputSpec(size, tuple(config.data.mean), tuple(config.data.std)),
      teacher_spec=convert.input_spec(config.teacher.path, config.teacher.image_size or size),
      temperature=config.distill.temperature, dtype=dtype,
      teacher_image_size=config.teacher.image_size, mixup_alpha=config.distill.mixup_alpha,
      cutmix_alpha=config.distill.cutmix_alpha,
      mix_switch_prob=config.distill.mix_switch_prob)
  return objective, backbone.variables


def init_hooks(loaded_student):
  """(params hook, model-state hook) for `trainer.train`: the loaded student backbone's
  weights and BatchNorm statistics in place of the fresh ones; (None, None) from scratch."""
  if loaded_student is None:
    return None, None
  return backbone_hooks(loaded_student, "student")


def run(config, workdir: str) -> dict:
  from kt_jax.train import trainer
  objective, loaded_student = build_objective_and_student(config)
  params_hook, state_hook = init_hooks(loaded_student)
  if loaded_student is not None:
    logging.info("Student initialised from %s", config.student.path)
  class_names = _class_names(config.teacher.path)
  if class_names is not None:
    objective.class_names = class_names  # recorded in model.json with the student
  stream, steps_per_epoch = builder.build_train_stream(config)
  logging.info("Transfer set: %d images (%s)", len(stream.source), config.data.source)
  last = trainer.train(config, workdir, objective, stream, steps_per_epoch,
                       init_params_hook=params_hook, init_model_state_hook=state_hook,
                       started_from=config.student.path)
  summary = {"final_metrics": last, "transfer_images": len(stream.source),
             "bad_records": stream.bad_records(),
             "completed": bool(last.get("completed", 1.0))}
  return summary


def _class_names(path: str):
  if not convert._is_model_path(path) or not paths.isdir(path):
    return None
  from kt_jax.convert import kt_format
  names = kt_format.read_spec(path).get("class_names")
  return tuple(names) if names else None
