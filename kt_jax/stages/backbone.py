"""Backbones for the supervised and distillation stages: a fresh registry model (`name`) or a
loaded one (`path`: a checkpoint, a kt_jax model directory, a shipped model such as
`mobilenet_v2` with its ImageNet weights, a task model's backbone and head), and the hooks
that put loaded weights into a fresh train state. `finetune` reads `backbone.*`;
`distill_task` reads `student.*` (a student initialised from a pretrained model)."""
import dataclasses

import jax.numpy as jnp
import numpy as np

from kt_jax import convert, models
from kt_jax.data import fewshot
from kt_jax.models.classifier import Classifier, Segmenter
from kt_jax.models.registry import InputSpec


@dataclasses.dataclass
class Backbone:
  module: object
  variables: dict | None      # None: initialised from the seed
  spec: InputSpec
  head: dict | None = None    # a loaded task model's head params (and its kind, class count)


def _strip_classifier(module):
  """A registry CNN with its own ImageNet classifier (`num_classes` > 0) -> features only."""
  if getattr(module, "num_classes", 0) and not isinstance(module, (Classifier, Segmenter)):
    return module.clone(num_classes=0)
  return module


def load_backbone(config, dtype, key: str = "backbone") -> Backbone:
  """`config[key]` (`name`: a fresh registry model; `path`: any model `load_pretrained`
  reads, a task model's backbone with its head) with its `overrides`, cast to `dtype`."""
  b = config[key]
  overrides = b.overrides.to_dict()
  if not b.get("path"):
    module = models.create(b.name, **overrides)
    return Backbone(_cast(_strip_classifier(module), dtype), None, models.input_spec(b.name))
  module, variables = convert.load_pretrained(b.path)
  head = None
  if isinstance(module, (Classifier, Segmenter)):  # a task model: its backbone (+ head)
    head = {"kind": fewshot.SEGMENTATION if isinstance(module, Segmenter)
            else fewshot.CLASSIFICATION, "num_classes": module.num_classes,
            "params": {k: v for k, v in variables["params"].items() if k.startswith("head")},
            "feature": getattr(module, "feature", None), "hidden": getattr(module, "hidden", 0)}
    variables = {col: tree["backbone"] for col, tree in variables.items() if "backbone" in tree}
    module = module.backbone
  if overrides:
    module = module.clone(**overrides)
  return Backbone(_cast(_strip_classifier(module), dtype), variables, convert.input_spec(b.path),
                  head)


def _cast(module, dtype):
  return module.clone(dtype=dtype) if hasattr(module, "dtype") else module


def overlay(fresh, loaded, what: str):
  """`fresh` with every leaf `loaded` has (same shape); a leaf `fresh` has and `loaded` lacks,
  or a shape that differs, is an error naming the paths (a backbone that is not this model)."""
  from flax import traverse_util
  flat_fresh = traverse_util.flatten_dict(fresh)
  flat_loaded = traverse_util.flatten_dict(loaded)
  missing = [k for k in flat_fresh if k not in flat_loaded]
  shapes = [k for k in flat_fresh if k in flat_loaded
            and tuple(np.shape(flat_loaded[k])) != tuple(np.shape(flat_fresh[k]))]
  if missing or shapes:
    names = ["/".join(map(str, k)) for k in (missing + shapes)[:5]]
    raise ValueError(f"The {what} does not fit the model: {len(missing)} missing and "
                     f"{len(shapes)} mis-shaped leaves, e.g. {', '.join(names)}.")
  return traverse_util.unflatten_dict(
      {k: jnp.asarray(flat_loaded[k], v.dtype) for k, v in flat_fresh.items()})


def backbone_hooks(loaded: dict, key: str):
  """(params hook, model-state hook) putting a loaded backbone's variables into a fresh train
  state's `params[key]["backbone"]` and `model_state[key][<collection>]["backbone"]` (BatchNorm
  statistics); shared by `finetune` ("model") and `distill_task` ("student")."""
  def params_hook(params):
    model = dict(params[key])
    model["backbone"] = overlay(model["backbone"], loaded["params"], "backbone checkpoint")
    return {**params, key: model}

  def state_hook(model_state):
    if not model_state:
      return model_state
    state = {col: dict(tree) for col, tree in model_state[key].items()}
    for col in state:
      if "backbone" in state[col] and col in loaded:
        state[col]["backbone"] = overlay(state[col]["backbone"], loaded[col],
                                          f"backbone's {col}")
    return {**model_state, key: state}
  return params_hook, state_hook
