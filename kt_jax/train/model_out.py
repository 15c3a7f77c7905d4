"""The trained student as a model anyone can load: `<workdir>/model/` (and `model_ema/`).

A checkpoint holds the whole train state (optimizer moments, Proteus' heads, EMA, RNG). What a
training stage delivers is the student alone, in the kt_jax model format
(`kt_jax.convert.kt_format`) that `convert.load_pretrained`, `convert export`, `frozen_eval`,
`init_from` and `teacher.path` read, with the input spec it was trained with.

Which train-state leaves make the student, and as what module, is the objective's
`feature_model(params, model_state)`. At the start of a run the trainer calls `write_layout`:
it runs `feature_model` on placeholders that carry their own train-state path and records the
module, the input spec and, per student variable, where it lives in the state
(`<workdir>/model_layout.json`). `extract` turns any checkpoint into a model with it, without
rebuilding the objective (no teacher to load); a workdir without the file rebuilds the
objective's structure from its `config.json` instead.
"""
import dataclasses
import json
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kt_jax import paths
from kt_jax.convert import kt_format
from kt_jax.train import checkpoint

LAYOUT_FILE = "model_layout.json"
MODEL_DIR = "model"
EMA_MODEL_DIR = "model_ema"


class ExtractError(ValueError):
  """A workdir, step or option that `extract` cannot turn into a model; the message says why."""


@dataclasses.dataclass(frozen=True)
class _Ref:
  """A placeholder leaf that names its own path in the train state."""
  path: tuple[str, ...]


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  raise TypeError(f"Unsupported tree key {key!r}")


def _tagged(tree, root: str):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _Ref((root,) + tuple(_key_name(k) for k in path)), tree)


def as_float32(module: nn.Module) -> nn.Module:
  """The module computing in float32: a saved model's default, whatever the run's compute
  dtype (params are float32 anyway; a loader such as the teacher's recasts it)."""
  changes = {}
  for f in dataclasses.fields(module):
    value = getattr(module, f.name, None)
    if f.name == "dtype":
      changes["dtype"] = jnp.float32
    elif f.name != "parent" and isinstance(value, nn.Module):
      changes[f.name] = as_float32(value)
  return module.clone(**changes) if changes else module


def model_extras(config, objective) -> dict:
  """What `model.json` records beside the module: the input spec the student was trained
  with, the stage, and the class names of a task model's head when the objective has them."""
  spec = getattr(objective, "data_spec", None)
  if spec is not None:
    spec = {"image_size": int(spec.image_size), "mean": list(spec.mean), "std": list(spec.std)}
  else:
    spec = {"image_size": int(config.image_size), "mean": list(config.data.mean),
            "std": list(config.data.std)}
  extra = {"input_spec": spec, "stage": config.stage,
           "trained_compute_dtype": config.get("compute_dtype", "float32")}
  names = getattr(objective, "class_names", None)
  if names is not None:
    extra["class_names"] = [str(n) for n in names]
  return extra


def layout(config, objective, params, model_state, ema: bool) -> dict | None:
  """The module spec, extras and variable -> train-state paths of the objective's student;
  None when `feature_model` computes its variables instead of selecting them."""
  module, variables = objective.feature_model(_tagged(params, "params"),
                                              _tagged(model_state, "model_state"))
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  if not flat or not all(isinstance(leaf, _Ref) for _, leaf in flat):
    return None
  return {"module": kt_format.module_spec(as_float32(module)),
          "extra": model_extras(config, objective), "ema": bool(ema),
          "variables": [[[_key_name(k) for k in path], list(leaf.path)] for path, leaf in flat]}


def write_layout(workdir: str, config, objective, abstract_state) -> None:
  """Records the student's layout for `extract` (process 0; shapes only, no FLOPs)."""
  spec = layout(config, objective, abstract_state.params, abstract_state.model_state,
                abstract_state.ema_params is not None)
  if spec is not None:
    paths.write_text(paths.join(workdir, LAYOUT_FILE), json.dumps(spec, indent=1))


def _to_host(x):
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_trained(workdir: str, config, objective, state) -> list[str]:
  """Writes `<workdir>/model/` (and `model_ema/` with EMA) from a train state; every process
  calls it (the arrays may be sharded over them), process 0 writes."""
  written = []
  for name, params in ((MODEL_DIR, state.params), (EMA_MODEL_DIR, state.ema_params)):
    if params is None:
      continue
    module, variables = objective.feature_model(params, state.model_state)
    extra = dict(model_extras(config, objective), source=paths.absolute(workdir),
                 step=int(jax.device_get(state.step)), ema=name == EMA_MODEL_DIR)
    out = paths.join(workdir, name)
    kt_format.save(out, as_float32(module), jax.tree.map(_to_host, variables), extra)
    written.append(out)
  return written


def _layout_from_config(workdir: str) -> dict:
  """For a workdir without `model_layout.json`: rebuild the objective from `config.json`
  through its stage's `build_objective` (this loads the teacher) and take shapes only."""
  path = paths.join(workdir, "config.json")
  if not paths.isfile(path):
    raise ExtractError(f"{workdir} has neither {LAYOUT_FILE} nor config.json: not a kt_jax "
                       "training workdir.")
  import ml_collections
  from kt_jax import stages
  config = ml_collections.ConfigDict(json.loads(paths.read_text(path)))
  build = getattr(sys.modules[stages.resolve(config.stage).__module__], "build_objective", None)
  if build is None:
    raise ExtractError(f"Stage {config.stage!r} of {workdir} trains no model to extract.")
  objective = build(config)
  size = config.image_size
  params, model_state = jax.eval_shape(objective.init, jax.random.key(0),
                                       {"image": jnp.zeros((1, size, size, 3), jnp.float32)})
  spec = layout(config, objective, params, model_state, bool(config.get("ema_decay", 0.0)))
  if spec is None:
    raise ExtractError(f"The {config.stage} objective computes its student's variables; "
                       "extract cannot select them from a checkpoint.")
  return spec


def read_layout(workdir: str) -> dict:
  path = paths.join(workdir, LAYOUT_FILE)
  if paths.isfile(path):
    return json.loads(paths.read_text(path))
  return _layout_from_config(workdir)


def _nest(pairs) -> dict:
  tree: dict = {}
  for path, value in pairs:
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def extract(workdir: str, step: int | None = None, ema: bool = False,
            out: str | None = None) -> str:
  """Writes the student of checkpoint `step` (default: the latest) as a kt_jax model
  directory, `out` or `<workdir>/model[_ema]_step<N>`; returns its path."""
  workdir = paths.absolute(workdir)  # local, file:// or a cloud URL (gs://...)
  if not paths.isdir(workdir):
    raise ExtractError(f"No workdir at {workdir}.")
  steps = checkpoint.saved_steps(workdir)
  if not steps:
    raise ExtractError(f"{workdir} has no checkpoints ({checkpoint.directory_of(workdir)}/"
                       "<step>/); pass the workdir of a training run.")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ExtractError(f"No checkpoint of step {step} in {checkpoint.directory_of(workdir)}; "
                       f"saved steps: {', '.join(map(str, steps))}.")
  spec = read_layout(workdir)
  if ema and not spec["ema"]:
    raise ExtractError(f"{workdir} was trained without EMA (ema_decay=0): there is no EMA "
                       "model; drop --ema.")
  entries = [(var_path, (["ema_params"] + state_path[1:]) if ema and state_path[0] == "params"
              else state_path) for var_path, state_path in spec["variables"]]
  restored = checkpoint.restore_subtrees(workdir, step, [p for _, p in entries])
  values = []
  for var_path, state_path in entries:
    node = restored
    for key in state_path:
      node = node[key]
    values.append((var_path, np.asarray(node)))
  out = out or paths.join(workdir, f"{EMA_MODEL_DIR if ema else MODEL_DIR}_step{step}")
  extra = dict(spec["extra"], source=workdir, step=step, ema=bool(ema))
  kt_format.save(out, kt_format.module_from_spec(spec["module"]), _nest(values), extra)
  return out
