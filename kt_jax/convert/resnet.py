"""PyTorch ResNet state dicts (Hugging Face or torchvision layout) into `kt_jax.models.resnet`.

The walk goes over the Flax leaves the module declares and asks each layout for the source
key of that leaf, so every Flax leaf is looked up exactly once; `strict.assemble` then reports
missing, unexpected and shape-mismatched keys together. Hugging Face's `ResNetModel` equals
torchvision v1.5 only with `downsample_in_first_stage=False, downsample_in_bottleneck=False`
(its defaults); a checkpoint trained with other settings has the same keys and shapes, so that
is the one thing this converter cannot detect.
"""
import re
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import numpy as np

from kt_jax.convert import strict
from kt_jax.models import registry
from kt_jax.models import resnet as _resnet  # noqa: F401  (registers the variants)

_HF_PREFIX = "resnet."  # ResNetForImageClassification nests ResNetModel here.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"layer(\d+)_(\d+)")


def matches_huggingface(keys: Iterable[str]) -> bool:
  return any(k.endswith("embedder.embedder.convolution.weight") for k in keys)


def matches_torchvision(keys: Iterable[str]) -> bool:
  keys = set(keys)
  return "conv1.weight" in keys and "layer1.0.conv1.weight" in keys


def matches(keys: Iterable[str]) -> bool:
  """True for a ResNet state dict in either layout this module reads."""
  keys = list(keys)
  return matches_huggingface(keys) or matches_torchvision(keys)


def _torchvision_module(parts: tuple[str, ...]) -> str:
  """('layer2_0', 'downsample_bn') -> 'layer2.0.downsample.1'; stem and fc keep their names."""
  if len(parts) == 1:
    return parts[0]
  block, layer = parts
  stage, index = _BLOCK.fullmatch(block).groups()
  layer = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(layer, layer)
  return f"layer{stage}.{index}.{layer}"


def _hf_kind(name: str) -> str:
  return "convolution" if "conv" in name else "normalization"


def _huggingface_module(parts: tuple[str, ...]) -> str:
  """('layer2_0', 'bn3') -> 'encoder.stages.1.layers.0.layer.2.normalization'."""
  if len(parts) == 1:
    if parts[0] == "fc":
      return "classifier.1"
    return f"embedder.embedder.{_hf_kind(parts[0])}"
  block, layer = parts
  stage, index = _BLOCK.fullmatch(block).groups()
  prefix = f"encoder.stages.{int(stage) - 1}.layers.{index}"
  if layer.startswith("downsample"):
    return f"{prefix}.shortcut.{_hf_kind(layer)}"
  return f"{prefix}.layer.{int(layer[-1]) - 1}.{_hf_kind(layer)}"


def _num_classes(source: strict.SourceTensors, head_key: str) -> int:
  return int(np.shape(source.take(head_key))[0]) if head_key in source else 0


def _source(state_dict: Mapping[str, Any]) -> tuple[strict.SourceTensors, Callable, str]:
  keys = list(state_dict)
  if matches_huggingface(keys):
    prefix = _HF_PREFIX if any(k.startswith(_HF_PREFIX) for k in keys) else ""
    return strict.SourceTensors(state_dict, prefix), _huggingface_module, "classifier.1.weight"
  if matches_torchvision(keys):
    return strict.SourceTensors(state_dict), _torchvision_module, "fc.weight"
  raise strict.CheckpointMismatchError(
      "Not a ResNet state dict in Hugging Face or torchvision layout; first keys: " +
      ", ".join(keys[:8]))


def convert(state_dict: Mapping[str, Any], variant_name: str,
            **overrides) -> tuple[nn.Module, dict]:
  """Returns (module, {'params', 'batch_stats'}) for registered variant `variant_name`.

  The head size comes from the checkpoint (0 when it has none); `overrides` (e.g. dtype)
  go to the module constructor. Raises CheckpointMismatchError naming every bad key.
  """
  source, module_key, head_key = _source(state_dict)
  module = registry.create(variant_name, num_classes=_num_classes(source, head_key), **overrides)
  expected = strict.variable_shapes(module)

  def key_of(path):
    _, *modules, leaf = path.split("/")
    return f"{module_key(tuple(modules))}.{_LEAF_NAMES[leaf]}"

  variables = strict.fill_by_key(source, expected, key_of,
                                 what=f"ResNet state dict for {variant_name!r}")
  return module, variables


# --------------------------------------------------------------------------------------------
# Export: the same key functions backwards.


def hf_config(module: nn.Module, num_labels: int):
  """transformers' ResNetConfig of `module` (torchvision v1.5 settings)."""
  import transformers
  expansion = _resnet.BLOCKS[module.block].expansion
  return transformers.ResNetConfig(
      embedding_size=module.width, layer_type=module.block, depths=list(module.stage_sizes),
      hidden_sizes=[module.width * 2**i * expansion for i in range(len(module.stage_sizes))],
      hidden_act="relu", downsample_in_first_stage=False, downsample_in_bottleneck=False,
      num_labels=max(num_labels, 1))


def to_hf_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax variables (head `fc` optional) -> ResNetForImageClassification keys."""
  from flax import traverse_util
  flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")
                                     if c in variables}, sep="/")
  state = {}
  for path, value in flat.items():
    _, *modules, leaf = path.split("/")
    key = f"{_huggingface_module(tuple(modules))}.{_LEAF_NAMES[leaf]}"
    state[key if key.startswith("classifier.") else _HF_PREFIX + key] = strict.flax_to_torch(
        np.asarray(value))
  return state
