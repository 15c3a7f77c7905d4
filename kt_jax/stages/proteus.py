"""The `proteus` stage: build teacher, student, data and evaluators from a config; train.

The trainer and the evaluators (orbax, tensorboardX, sklearn, ...) are imported when the stage
runs, not with this module, so the runner's `validate` answers in about a second.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kt_jax import convert, models, paths, sharding
from kt_jax.data import builder
from kt_jax.errors import UserError
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import proteus, target_norm
from kt_jax.stages import checks
from kt_jax.stages.teacher import load_teacher
from kt_jax.train.weight_inheritance import inherit


def validate(config) -> None:
  """Everything that can be checked before the teacher is loaded (see stages.checks)."""
  checks.check_teacher_path(config.teacher.path, "teacher.path")
  checks.check_model(config.student.name, config.student.overrides, "student")
  if "dtype" in config.student.overrides:
    raise UserError("Set the student's dtype with --config.compute_dtype, not "
                    "student.overrides.dtype.")
  checks.check_choice(config.compute_dtype, "compute_dtype", checks.COMPUTE_DTYPES)
  checks.check_positive(config, "image_size")
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  if config.init_from:
    checks.check_teacher_path(config.init_from, "init_from")
  checks.check_choice(config.proteus.target_norm, "proteus.target_norm", target_norm.KINDS)
  checks.check_choice(config.proteus.head_init, "proteus.head_init", ("default", "ridge"))
  builder.validate(config)
  checks.check_eval(config.eval)
  if not checks.is_deferred(config.teacher.path):
    check_patch_targets(config, convert.has_patch_objective(config.teacher.path))


def check_patch_targets(config, teacher_has_patch_objective: bool | None) -> None:
  """Which loss terms apply to this teacher. CLIP and SigLIP towers are trained on the
  image-level embedding only, and the Proteus paper distils only their class token: with
  `proteus.patch_targets="auto"` such a teacher needs lambda_fea = lambda_patch = 0 (an error
  says so); "yes" distils their patch tokens anyway, with the lambdas given."""
  checks.check_choice(config.proteus.get("patch_targets", "auto"), "proteus.patch_targets",
                      ("auto", "yes"))
  if (teacher_has_patch_objective is False
      and config.proteus.get("patch_targets", "auto") == "auto"
      and (config.proteus.lambda_fea or config.proteus.lambda_patch)):
    raise UserError(
        f"teacher.path {config.teacher.path} is a CLIP/SigLIP-style tower (image-level "
        "objective): its patch tokens are no Proteus target. Distil the class token only "
        "with --config.proteus.lambda_fea=0 --config.proteus.lambda_patch=0, or distil the "
        "patch tokens anyway with --config.proteus.patch_targets=yes.")


def build_objective(config) -> proteus.Proteus:
  dtype = jnp.dtype(config.compute_dtype)
  teacher, teacher_vars = load_teacher(config, dtype)
  check_patch_targets(config, getattr(teacher, "patch_objective", True))
  student = models.create(config.student.name, dtype=dtype, **config.student.overrides.to_dict())
  data_spec = InputSpec(config.image_size, tuple(config.data.mean), tuple(config.data.std))
  teacher_spec = convert.input_spec(config.teacher.path, config.image_size)
  return proteus.Proteus(
      student=student, teacher=teacher, teacher_variables=teacher_vars, data_spec=data_spec,
      teacher_spec=teacher_spec, image_size=config.image_size,
      lambda_token=config.proteus.lambda_token, lambda_fea=config.proteus.lambda_fea,
      lambda_patch=config.proteus.lambda_patch,
      mask_probability=config.proteus.mask_probability,
      mask_ratio=tuple(config.proteus.mask_ratio), mask_first_n=config.proteus.mask_first_n,
      dtype=dtype)


def fit_target_norm(config, objective: proteus.Proteus, images) -> proteus.Proteus:
  """The objective with `proteus.target_norm` statistics fitted on the teacher's features of
  fixed unaugmented training images (so a resumed run refits the same statistics)."""
  kind = config.proteus.get("target_norm", "none")
  if kind == "none":
    return objective
  teacher = jax.jit(objective.teacher_outputs)
  outs = [teacher(objective.teacher_variables, images[i:i + 64])
          for i in range(0, len(images), 64)]
  cls = np.concatenate([np.asarray(o["x_norm_clstoken"], np.float32) for o in outs])
  patch = np.concatenate([np.asarray(o["x_norm_patchtokens"], np.float32) for o in outs])
  stats = {"cls": target_norm.fit(kind, cls), "patch": target_norm.fit(kind, patch)}
  logging.info("Target normalisation %r fitted on %d images", kind, len(images))
  return dataclasses.replace(objective, target_stats=jax.tree.map(jnp.asarray, stats))


def make_init_hook(config, objective: proteus.Proteus, images):
  """What replaces freshly initialised params, in order: weight inheritance (`init_from`),
  then ridge-fitted heads (`proteus.head_init="ridge"`); None when neither is asked for."""
  steps = []
  if config.get("init_from"):
    steps.append(lambda p: inherit(p, config.init_from))
  head_init = config.proteus.get("head_init", "default")
  if head_init == "ridge":
    steps.append(lambda p: objective.ridge_heads(p, objective.frozen(), images,
                                                 config.proteus.head_init_alpha))
  if not steps:
    return None
  def hook(params):
    for step in steps:
      params = step(params)
    return params
  return hook


def make_evaluate(config, objective, holdout=None):
  """Scores the student (and its EMA) on the config's labelled tasks, the teacher once; and,
  on the held-out proxy images, the R^2 of the student's predictions of the teacher."""
  from kt_jax.eval import evaluators
  mesh = sharding.make_mesh(config.mesh.to_dict())
  evaluator = None
  teacher_scores = {}
  if config.eval.tasks:
    evaluator = evaluators.KnnLinearProbe(
        evaluators.build_tasks(config.eval), config.eval.batch_size, config.eval.knn_k,
        config.eval.knn_temperature, config.eval.feature, config.seed, mesh,
        probe=config.eval.get("probe", "auto"), workers=config.eval.get("workers", 0))
    teacher_scores = evaluator(*objective.teacher_model(), objective.teacher_spec, "teacher/")
  r2 = None
  if holdout is not None and len(holdout):
    replicated = sharding.replicated(mesh)
    images = jax.device_put(builder.holdout_images(config, holdout), replicated)
    teacher = jax.device_put(objective.frozen(), replicated)
    r2_fn = jax.jit(objective.held_out_r2, out_shardings=replicated)
    r2 = lambda params: {k: float(v) for k, v in r2_fn(
        jax.device_put(params, replicated), teacher, images).items()}
  if evaluator is None and r2 is None:
    return None, {}

  def evaluate(step, state):
    scores = {}
    for prefix, params in (("student/", state.params), ("student_ema/", state.ema_params)):
      if params is None:
        continue
      if r2 is not None:
        scores.update({f"{prefix}heldout/{k}": v for k, v in r2(params).items()})
      if evaluator is not None:
        scores.update(evaluator(*objective.feature_model(params, state.model_state),
                                objective.data_spec, prefix))
    logging.info("step %d: %s", step, scores)
    return scores

  return evaluate, teacher_scores


def run(config, workdir: str) -> dict:
  from kt_jax.eval import evaluators
  from kt_jax.train import trainer
  evaluators.check_tasks(config.eval)  # a missing package or folder: before the teacher loads
  objective = build_objective(config)
  stream, steps_per_epoch = builder.build_train_stream(config)
  needs_images = (config.proteus.get("target_norm", "none") != "none"
                  or config.proteus.get("head_init", "default") != "default")
  fit_images = (builder.first_images(config, stream.source, config.proteus.fit_images)
                if needs_images else None)
  objective = fit_target_norm(config, objective, fit_images)
  init_hook = make_init_hook(config, objective, fit_images)
  evaluate, teacher_scores = make_evaluate(config, objective, stream.holdout)
  before = {}
  if evaluate is not None and config.eval.get("before_training", True):
    # Step-0 scores of the freshly initialised student (same seed as the run's init).
    rng = jax.random.split(jax.random.key(config.seed))[0]
    sample = {"image": np.zeros((1, config.image_size, config.image_size, 3), np.float32)}
    params, model_state = objective.init(rng, sample)
    if init_hook is not None:
      params = init_hook(params)
    before = evaluate(0, _Params(params, model_state))
  last = trainer.train(config, workdir, objective, stream, steps_per_epoch, evaluate,
                       init_params_hook=init_hook)
  after = {}
  eval_file = paths.join(workdir, "eval.jsonl")
  if paths.exists(eval_file):
    after = json.loads(paths.read_text(eval_file).splitlines()[-1])
  summary = {"final_metrics": last, "teacher": teacher_scores, "student_before": before,
             "student_after": after, "bad_records": stream.bad_records(),
             "completed": bool(last.get("completed", 1.0))}
  if jax.process_index() == 0 and summary["completed"]:
    from kt_jax.train import metrics
    summary["eval_curves"] = metrics.plot_eval_curves(workdir, before, teacher_scores)
  _print_report(summary)
  return summary


class _Params:
  """Just enough of a TrainState for the evaluator before training starts."""

  def __init__(self, params, model_state):
    self.params, self.model_state, self.ema_params = params, model_state, None


def _print_report(summary):
  """Teacher, student at init and trained student side by side: accuracies in %, R^2 raw."""
  keys = sorted({k.split("/", 1)[1] for d in (summary["teacher"], summary["student_after"])
                 for k in d if k.startswith(("teacher/", "student/"))})
  if not keys:
    return
  def cell(scores, prefix, key):
    if prefix + key not in scores:
      return "-"
    value = scores[prefix + key]
    return f"{value:.3f}" if key.endswith("_r2") else f"{100 * value:.1f}%"
  print(f"\n{'metric':<34}{'teacher':>9}{'student@0':>11}{'student':>9}")
  for k in keys:
    print(f"{k:<34}{cell(summary['teacher'], 'teacher/', k):>9}"
          f"{cell(summary['student_before'], 'student/', k):>11}"
          f"{cell(summary['student_after'], 'student/', k):>9}")
  print(f"final loss {summary['final_metrics'].get('loss', float('nan')):.4f}")
