"""Checks a config before anything is loaded, written or computed.

The runner calls `check(config)` before it creates the workdir; it resolves the stage and
calls that stage module's `validate(config)`, which raises `UserError` on a value the stage
cannot use: a missing or non-checkpoint teacher, a data path that is not there, a zero batch,
a model override the model does not take, an option the chosen source ignores. Each check
reads at most a directory entry or a file's first bytes, so a bad run fails in about a
second instead of after minutes of teacher loading. Values holding "{stage:NAME}" are the
workdir of an earlier pipeline stage and are checked when that stage has run.
"""
import dataclasses
import sys

from kt_jax.errors import UserError

FEATURES = ("x_norm_clstoken", "mean_patchtoken", "cls+mean_patch")
COMPUTE_DTYPES = ("float32", "bfloat16")


def check(config) -> None:
  """Raises UserError if `config` cannot run: unknown stage, or the stage's own checks."""
  from kt_jax import stages
  stage = config.get("stage", "")
  try:
    fn = stages.resolve(stage)
  except ValueError as e:
    raise UserError(f"{e} (--config.stage)") from None
  if fn is stages.run_pipeline:
    check_pipeline(config)
    return
  validate = getattr(sys.modules[fn.__module__], "validate", None)
  if validate is not None:
    validate(config)


def check_pipeline(config) -> None:
  """Every stage of the pipeline, before the first one runs."""
  names = set(config.get("stages", {}))
  order = tuple(config.get("order", ()))
  if names != set(order):
    raise UserError(f"config.order and config.stages name different stages: "
                    f"{sorted(names ^ set(order))}")
  for i, name in enumerate(order):
    later = set(order[i:])
    for earlier in _stage_references(config.stages[name]):
      if earlier not in order or earlier in later:
        raise UserError(f"pipeline stage {name!r} uses {{stage:{earlier}}}, which is not an "
                        f"earlier stage of config.order {order}")
    try:
      check(config.stages[name])
    except UserError as e:
      raise UserError(f"pipeline stage {name!r}: {e}") from None


def _stage_references(config) -> set[str]:
  import re
  found = set()
  for value in _strings(config):
    found.update(re.findall(r"\{stage:([^}]*)\}", value))
  return found


def _strings(node):
  import ml_collections
  for key in node.keys():
    value = node[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _strings(value)
    elif isinstance(value, str):
      yield value
    elif isinstance(value, (tuple, list)):  # e.g. select's candidates
      yield from (v for v in value if isinstance(v, str))


def is_deferred(value) -> bool:
  """A "{stage:NAME}" path: it exists once that earlier pipeline stage has run."""
  return isinstance(value, str) and "{stage:" in value


def check_teacher_path(path: str, key: str = "teacher.path") -> None:
  if not path:
    raise UserError(f"Set --config.{key}=<checkpoint file or directory, or a shipped model "
                    "such as efficientnet_lite0>.")
  if is_deferred(path):
    return
  from kt_jax import convert
  try:
    convert.check_source(path)
  except UserError as e:
    raise UserError(f"{key}: {e}") from None


def check_positive(config, *keys: str, prefix: str = "config.") -> None:
  for key in keys:
    value = _get(config, key)
    if not value > 0:
      raise UserError(f"{prefix}{key} must be positive, got {value!r}.")


def check_non_negative(config, *keys: str, prefix: str = "config.") -> None:
  for key in keys:
    value = _get(config, key)
    if value < 0:
      raise UserError(f"{prefix}{key} must be >= 0, got {value!r}.")


def check_choice(value, key: str, choices) -> None:
  if value not in choices:
    raise UserError(f"config.{key}={value!r} is not one of {', '.join(map(str, choices))}.")


def check_eval(ev, key: str = "eval") -> None:
  """The shared `eval` section (config_defaults.eval_config)."""
  if isinstance(ev.tasks, str) or not all(isinstance(t, str) for t in ev.tasks):
    raise UserError(f"config.{key}.tasks must be a tuple of task names, got {ev.tasks!r}.")
  check_positive(ev, "batch_size", "knn_k", "knn_temperature", prefix=f"config.{key}.")
  check_choice(ev.feature, f"{key}.feature", FEATURES)


def model_arguments(name: str) -> list[str]:
  """The constructor arguments of registered model `name` (its flax dataclass fields)."""
  from kt_jax import models
  module_type = type(models.create(name))  # a linen module: constructed, not initialised
  return sorted(f.name for f in dataclasses.fields(module_type)
                if f.init and f.name not in ("parent", "name"))


def check_model(name: str, overrides, key: str) -> None:
  """`name` is registered and every override is one of its constructor arguments."""
  from kt_jax import models
  if name not in models.names():
    raise UserError(f"config.{key}.name={name!r} is not a registered model; known: "
                    f"{', '.join(models.names())}")
  unknown = sorted(set(overrides or {}) - set(model_arguments(name)))
  if unknown:
    raise UserError(f"config.{key}.overrides: {name} has no argument {', '.join(unknown)}; "
                    f"its arguments: {', '.join(model_arguments(name))}")


def check_model_source(section, key: str) -> None:
  """A model section {"path", "name", "overrides"}: exactly one of a loadable `path` (a
  checkpoint, model directory, shipped model, random:<name>) and a registered `name`."""
  if bool(section.path) == bool(section.name):
    raise UserError(f"Set exactly one of --config.{key}.path (a checkpoint, model directory, "
                    f"shipped model or random:<name>) and --config.{key}.name (a registered "
                    "model, initialised from the seed).")
  if section.path:
    check_teacher_path(section.path, f"{key}.path")
  else:
    check_model(section.name, section.overrides, key)
  if "dtype" in section.overrides:
    raise UserError(f"Set the dtype with --config.compute_dtype, not {key}.overrides.dtype.")


def check_spatial(backbone, size: int, what: str, head=None) -> None:
  """UserError unless `backbone` (a flax module) has a spatial output a segmentation head can
  read (a feature map, or patch tokens) and, for `head.skip_stride`, the finer map its
  decoder reads; traced for shapes only, no weights or FLOPs."""
  import jax
  import jax.numpy as jnp
  from kt_jax.models.classifier import spatial_features
  found = {}

  def outputs():
    out = backbone.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 3)))[0]
    found["keys"] = sorted(out)
    found["spatial"] = spatial_features(out, (size, size)) is not None
    return 0
  jax.eval_shape(outputs)
  if not found["spatial"]:
    raise UserError(f"A segmentation head needs a backbone with a spatial output (feature_map "
                    f"or patch tokens); {what} returns only {', '.join(found['keys'])}.")
  skip = head.skip_stride if head is not None else 0
  if skip:
    from kt_jax.models import layers
    if layers.stride_key(skip) not in found["keys"]:
      finer = [k for k in found["keys"] if k.startswith("stride_")]
      raise UserError(f"head.skip_stride={skip} reads the backbone's {layers.stride_key(skip)} "
                      f"feature map, which {what} does not return (it has: "
                      f"{', '.join(finer) or 'none; only CNNs do'}).")
    if head.hidden < 2:
      raise UserError(f"head.skip_stride={skip} needs head.hidden >= 2 (the decoder's width), "
                      f"got {head.hidden}.")


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def task_head_classes(path: str) -> int | None:
  """The class count of a task model's head (a kt_jax model directory whose module wraps a
  backbone with a head, as `finetune` writes), read from its model.json; None for anything
  else (a plain backbone, a checkpoint file, a shipped or random model)."""
  from kt_jax import convert
  from kt_jax.convert import kt_format
  if not convert._is_model_path(path) or is_deferred(path) or "://" in path:
    return None
  if not kt_format.is_kt_dir(path):
    return None
  fields = kt_format.read_spec(path).get("fields", {})
  if isinstance(fields.get("backbone"), dict) and "num_classes" in fields:
    return int(fields["num_classes"])
  return None


def check_head_classes(config) -> None:
  """distill_task: the teacher is a task model, and the student's head (`student.num_classes`,
  0: the teacher's) has the teacher's class count."""
  path = config.teacher.path
  if path.startswith("random:"):
    teacher = config.teacher.num_classes
  elif is_deferred(path) or "://" in path:
    return  # checked once the earlier stage has written it
  else:
    teacher = task_head_classes(path)
    if teacher is None:
      raise UserError(f"teacher.path={path} is not a task model (a backbone with a head): "
                      "distil from a `finetune` stage's model/, e.g. "
                      "--config.teacher.path=<finetune workdir>/model.")
  student = config.student.get("num_classes", 0)
  if student and student != teacher:
    raise UserError(f"The teacher's head has {teacher} classes but student.num_classes="
                    f"{student}: task distillation needs the same classes; set "
                    f"--config.student.num_classes={teacher} (or 0: the teacher's).")


def check_transfer_set(config) -> None:
  """An image folder given as the transfer set holds at least one readable image: files are
  decoded in order until one is, so a good folder costs one decode."""
  data = config.data
  if (data.source != "image_folder" or not data.get("path") or is_deferred(data.path)
      or "://" in data.path.replace("file://", "")):
    return
  from kt_jax.data import sources, transforms
  files, _, _, _ = sources.list_image_folder(data.path.removeprefix("file://"))
  for path in files:
    try:
      transforms.decode_image(sources.read_bytes(path))
      return
    except Exception:  # pylint: disable=broad-except
      continue
  raise UserError(f"config.data.path={data.path}: no readable image in the transfer set "
                  f"({len(files)} image files, none decodes).")
