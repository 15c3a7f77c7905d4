"""transformers `MobileViTV2Model` / `MobileViTV2ForImageClassification` <-> `kt_jax.models.mobilevit_v2`.

The Flax modules carry transformers' attribute names, `layer.N` written `layer_N`, so one
function maps every Flax variable path to its state-dict key and serves both directions.
Import walks the model's own paths (strict: every surplus or absent tensor is reported); the
architecture (width, depths, attention widths) is read from config.json when there is one,
else from the tensors.
"""
from typing import Any, Iterable, Mapping

import flax.linen as nn
import numpy as np

from kt_jax.convert import strict
from kt_jax.models import mobilevit_v2 as mvit

_PREFIX = "mobilevitv2."  # MobileViTV2ForImageClassification nests the model here.
_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}
VARIANTS = tuple(mvit.VARIANTS)


def matches(keys: Iterable[str]) -> bool:
  return any(k.endswith("encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight")
             for k in keys)


def torch_key(path: str) -> str:
  """'params/layer_2/transformer/layer_0/ffn/conv1/convolution/kernel' ->
  'encoder.layer.2.transformer.layer.0.ffn.conv1.convolution.weight' (no model prefix)."""
  collection, *modules, leaf = path.split("/")
  parts = [m.replace("layer_", "layer.") if m.startswith("layer_") else m for m in modules]
  if modules[0].startswith("layer_"):
    parts.insert(0, "encoder")
  return ".".join(parts + [_LEAF[(collection, leaf)]])


def _full_key(path: str) -> str:
  key = torch_key(path)
  return key if key.startswith("classifier.") else _PREFIX + key


def module_fields(hf_config: Mapping[str, Any]) -> dict:
  """MobileViTV2 constructor fields from a transformers config (dict)."""
  fields = dict(width_multiplier=float(hf_config.get("width_multiplier", 1.0)),
                n_attn_blocks=tuple(hf_config.get("n_attn_blocks", (2, 4, 3))),
                base_attn_unit_dims=tuple(hf_config.get("base_attn_unit_dims", (128, 192, 256))),
                expand_ratio=float(hf_config.get("expand_ratio", 2.0)),
                ffn_multiplier=int(hf_config.get("ffn_multiplier", 2)),
                patch_size=int(hf_config.get("patch_size", 2)),
                conv_kernel_size=int(hf_config.get("conv_kernel_size", 3)),
                layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-5)))
  act = hf_config.get("hidden_act", "swish")
  if act not in ("swish", "silu"):
    raise strict.CheckpointMismatchError(f"MobileViT-V2 with hidden_act={act!r}: only swish "
                                         "is ported.")
  if int(hf_config.get("output_stride", 32)) != 32:
    raise strict.CheckpointMismatchError("MobileViT-V2 with output_stride != 32 (dilated, for "
                                         "segmentation) is not ported.")
  return fields


def _fields_from_tensors(source: strict.SourceTensors, variant: str) -> dict:
  """Width from the variant name; depths and attention widths from the tensors."""
  depths, dims = [], []
  for i in (2, 3, 4):
    qkv = f"encoder.layer.{i}.transformer.layer.0.attention.qkv_proj.convolution.weight"
    dims.append(source.shape_of(qkv)[1] if qkv in source else 0)
    depths.append(sum(1 for k in source.keys() if k.startswith(f"encoder.layer.{i}.transformer.layer.")
                      and k.endswith("attention.qkv_proj.convolution.weight")))
  width = mvit.VARIANTS[variant]
  return dict(width_multiplier=width, n_attn_blocks=tuple(depths),
              base_attn_unit_dims=tuple(_base_dim(d, width) for d in dims))


def _base_dim(dim: int, width: float) -> int:
  """The roundest base width that `make_divisible(base * width)` turns into `dim` (Apple's
  are multiples of 64), so an exported config.json reads like the original."""
  for step in (64, 32, 16, 8, 1):
    base = max(step, round(dim / width / step) * step)
    if mvit.make_divisible(base * width) == dim:
      return base
  return round(dim / width)


def convert(state_dict: Mapping, variant_name: str = "mobilevit_v2_100",
            hf_config: Mapping[str, Any] | None = None, **overrides) -> tuple[nn.Module, dict]:
  """Returns (module, {'params', 'batch_stats'}). With `hf_config` the architecture comes from
  it and `variant_name` is ignored; without, from the variant and the tensors."""
  source = strict.SourceTensors(state_dict, strip_prefix=_PREFIX)
  fields = module_fields(hf_config) if hf_config else _fields_from_tensors(source, variant_name)
  num_classes = source.shape_of("classifier.weight")[0] if "classifier.weight" in source else 0
  module = mvit.MobileViTV2(**fields, num_classes=num_classes, **overrides)
  expected = strict.variable_shapes(module, image_size=64)
  what = f"MobileViT-V2 state dict (width {fields['width_multiplier']})"
  return module, strict.fill_by_key(source, expected, torch_key, what)


def hf_config(module: mvit.MobileViTV2, num_labels: int):
  """The transformers config of `module` (classification head of `num_labels`)."""
  import transformers
  if module.layer_norm_eps <= 0:
    raise ValueError("layer_norm_eps must be positive.")
  return transformers.MobileViTV2Config(
      width_multiplier=module.width_multiplier, n_attn_blocks=list(module.n_attn_blocks),
      base_attn_unit_dims=list(module.base_attn_unit_dims), expand_ratio=module.expand_ratio,
      ffn_multiplier=module.ffn_multiplier, patch_size=module.patch_size,
      conv_kernel_size=module.conv_kernel_size, layer_norm_eps=module.layer_norm_eps,
      hidden_act="swish", num_labels=num_labels)


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax variables (params, batch_stats; a `classifier` head included) -> transformers'
  `MobileViTV2ForImageClassification` keys."""
  from flax import traverse_util
  flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")
                                     if c in variables}, sep="/")
  return {_full_key(path): strict.flax_to_torch(np.asarray(value))
          for path, value in flat.items()}
