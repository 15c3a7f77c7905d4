"""A kt_jax model (a trained student, with its task head) back out to PyTorch.

Formats:
  hf:                config.json + model.safetensors that transformers'
                     `AutoModelForImageClassification` loads offline (a head) or `AutoModel`
                     loads (no head): ViT -> Dinov2[WithRegisters]ForImageClassification,
                     ResNet -> ResNetForImageClassification, MobileNetV2 ->
                     MobileNetV2ForImageClassification, MobileViT-V2 ->
                     MobileViTV2ForImageClassification.
  efficientnet_lite: a .pth state dict for `efficientnet_lite_pytorch.EfficientNet`. transformers'
                     EfficientNet is the B0-B7 family (squeeze-excitation, swish, symmetric
                     padding): Lite cannot be written in it, so Lite has no hf export.
  onnx:              the PyTorch model of either of the above through `torch.onnx.export`.

A model's head is the `head` of a `Classifier` (what task distillation trains) or the
backbone's own head (`fc` / `classifier`, an imported ImageNet model).

BatchNorm statistics are exported as they are. Variance convention: Flax's BatchNorm folds the
biased batch variance (divided by n) into its running average, torch's `running_var` the
unbiased one (divided by n - 1). Both normalise with the stored running variance in eval
mode, so the exported model's outputs equal the Flax model's; only further training in torch
accumulates with the other convention (a factor n / (n - 1) per batch of n values per
channel, negligible for n in the thousands). The stored values are not rescaled.
"""
import dataclasses
import os
import tempfile
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from kt_jax.errors import UserError
from kt_jax.models.classifier import Classifier

BN_VARIANCE_CONVENTION = "flax: biased batch variance; torch: unbiased; exported unchanged"
FORMATS = ("hf", "dinov2", "efficientnet_lite", "onnx")
# The backbone's own linear head, per family (its params name).
_OWN_HEAD = {"ResNet": "fc", "MobileNetV2": "classifier", "EfficientNetLite": "fc",
             "MobileViTV2": "classifier"}


@dataclasses.dataclass
class Split:
  """A model as backbone (without its own head) + head params (None: features only)."""
  backbone: nn.Module
  variables: dict
  head: dict | None


def split_head(module: nn.Module, variables: Mapping[str, Any]) -> Split:
  if isinstance(module, Classifier):
    if module.feature != "x_norm_clstoken":
      raise UserError(f"Export needs the head on the pooled feature (x_norm_clstoken); this "
                      f"classifier reads {module.feature!r}.")
    inner = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
    backbone = _without_own_head(module.backbone)
    inner["params"] = {k: v for k, v in inner["params"].items()
                       if k != _OWN_HEAD.get(type(module.backbone).__name__)}
    return Split(backbone, inner, dict(variables["params"]["head"]))
  own = _OWN_HEAD.get(type(module).__name__)
  if own and getattr(module, "num_classes", 0) > 0:
    params = dict(variables["params"])
    head = dict(params.pop(own))
    return Split(_without_own_head(module), {**variables, "params": params}, head)
  return Split(module, dict(variables), None)


def _without_own_head(module: nn.Module) -> nn.Module:
  return module.clone(num_classes=0) if getattr(module, "num_classes", 0) else module


def _with_head(split: Split, head_name: str) -> dict:
  """The backbone's variables with the head back under `head_name` (the family's own)."""
  params = dict(split.variables["params"])
  if split.head is not None:
    params[head_name] = split.head
  return {**split.variables, "params": params}


def _num_labels(split: Split) -> int:
  return 0 if split.head is None else int(np.shape(split.head["kernel"])[1])


def _save_hf(config, state: dict[str, np.ndarray], architecture: str, out_dir: str) -> None:
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  config.architectures = [architecture]
  config.save_pretrained(out_dir)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
            os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def export_hf(module: nn.Module, variables: Mapping[str, Any], out_dir: str) -> str:
  """Writes a transformers directory; returns the architecture written."""
  split = split_head(module, variables)
  family = type(split.backbone).__name__
  labels = _num_labels(split)
  if family == "VisionTransformer":
    return _export_vit(split, out_dir)
  if family == "ResNet":
    from kt_jax.convert import resnet
    config = resnet.hf_config(split.backbone, labels)
    state = resnet.to_hf_state_dict(_with_head(split, "fc"))
    arch = "ResNetForImageClassification"
  elif family == "MobileNetV2":
    from kt_jax.convert import mobilenet_v2
    config = mobilenet_v2.hf_config(split.backbone, labels)
    state = mobilenet_v2.to_hf_state_dict(_with_head(split, "classifier"))
    arch = "MobileNetV2ForImageClassification"
  elif family == "MobileViTV2":
    from kt_jax.convert import mobilevit_v2
    config = mobilevit_v2.hf_config(split.backbone, labels)
    state = mobilevit_v2.to_state_dict(_with_head(split, "classifier"))
    arch = "MobileViTV2ForImageClassification"
  elif family == "EfficientNetLite":
    raise UserError("transformers has no EfficientNet-Lite (its EfficientNet is B0-B7, with "
                    "squeeze-excitation and swish); use --format efficientnet_lite or onnx.")
  else:
    raise UserError(f"No hf export for {family}.")
  if labels == 0:  # no head: the bare model, for AutoModel
    arch = arch.replace("ForImageClassification", "Model")
    prefix = {"ResNet": "resnet.", "MobileNetV2": "mobilenet_v2.",
              "MobileViTV2": "mobilevitv2."}[family]
    state = {k.removeprefix(prefix): v for k, v in state.items()}
  _save_hf(config, state, arch, out_dir)
  return arch


def _export_vit(split: Split, out_dir: str) -> str:
  """Dinov2[WithRegisters]Model, or ...ForImageClassification whose head reads
  concat(class token, mean patch token): our head (class token only) goes in with zeros on the
  mean-patch half, which gives the same logits. A ViT without LayerScale or biases is written
  with LayerScale 1 and zero biases, the same function."""
  import transformers
  from kt_jax.convert import vit
  module, params = split.backbone, dict(split.variables["params"])
  module, params = _dinov2_compatible(module, params)
  vit.export_hf(module, params, out_dir)
  if split.head is None:
    return "Dinov2WithRegistersModel" if module.num_register_tokens else "Dinov2Model"
  registers = module.num_register_tokens
  cls_name = "Dinov2WithRegisters" if registers else "Dinov2"
  config = getattr(transformers, f"{cls_name}Config").from_pretrained(out_dir)
  config.num_labels = _num_labels(split)
  state = vit.params_to_state_dict(module, params, "hf5")
  state = {"dinov2." + k if not registers else "dinov2_with_registers." + k: v
           for k, v in state.items()}
  kernel = np.asarray(split.head["kernel"], np.float32)  # (D, classes)
  state["classifier.weight"] = np.concatenate([kernel.T, np.zeros_like(kernel.T)], axis=1)
  state["classifier.bias"] = np.asarray(split.head["bias"], np.float32)
  arch = f"{cls_name}ForImageClassification"
  _save_hf(config, state, arch, out_dir)
  return arch


def _dinov2_compatible(module, params: dict):
  """Adds LayerScale (ones) and zero biases where the module has none."""
  import jax
  changes = {}
  if module.layerscale_init is None:
    changes["layerscale_init"] = 1.0
  for flag in ("qkv_bias", "proj_bias", "ffn_bias"):
    if not getattr(module, flag):
      changes[flag] = True
  if not changes:
    return module, params
  full = module.clone(**changes)
  side = module.pos_grid * module.patch_size
  shapes = jax.eval_shape(lambda: full.init(jax.random.key(0), np.zeros((1, side, side, 3),
                                                                         np.float32)))["params"]
  from flax import traverse_util
  have = traverse_util.flatten_dict(params, sep="/")
  filled = {}
  for path, s in traverse_util.flatten_dict(shapes, sep="/").items():
    if path in have:
      filled[path] = have[path]
    else:  # a new LayerScale gamma is ones, a new bias zeros
      filled[path] = np.ones(s.shape, np.float32) if path.endswith("gamma") else np.zeros(
          s.shape, np.float32)
  return full, traverse_util.unflatten_dict(filled, sep="/")


def export_efficientnet_lite(module: nn.Module, variables: Mapping[str, Any], path: str) -> str:
  """A .pth state dict for `efficientnet_lite_pytorch.EfficientNet.from_name('efficientnet-liteN',
  num_classes=...)`; returns that model name."""
  import torch
  from kt_jax.convert import efficientnet_lite
  split = split_head(module, variables)
  if type(split.backbone).__name__ != "EfficientNetLite":
    raise UserError(f"--format efficientnet_lite needs an EfficientNet-Lite; this is a "
                    f"{type(split.backbone).__name__}.")
  if split.head is None:
    raise UserError("efficientnet_lite_pytorch's model always has its `_fc` head; this model "
                    "has none.")
  state = efficientnet_lite.to_state_dict(_with_head(split, "fc"))
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  return efficientnet_lite.reference_name(split.backbone)


def torch_model(module: nn.Module, variables: Mapping[str, Any]):
  """The exported PyTorch model itself (eval mode): transformers for the hf families,
  `efficientnet_lite_pytorch` for Lite. Returns (model, takes_pixel_values)."""
  split = split_head(module, variables)
  if type(split.backbone).__name__ == "EfficientNetLite":
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "model.pth")
      name = export_efficientnet_lite(module, variables, path)
      model = EfficientNet.from_name(name, num_classes=_num_labels(split))
      model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
  import transformers
  with tempfile.TemporaryDirectory() as tmp:
    arch = export_hf(module, variables, tmp)
    auto = (transformers.AutoModelForImageClassification if arch.endswith("Classification")
            else transformers.AutoModel)
    model = auto.from_pretrained(tmp)
  return model.eval()


class _Logits:
  """Wraps a transformers model so the ONNX graph has one output: the logits (or pooled
  features of a headless model)."""

  def __new__(cls, model):
    import torch

    class Wrapped(torch.nn.Module):
      def __init__(self):
        super().__init__()
        self.model = model

      def forward(self, pixel_values):
        out = self.model(pixel_values)
        if isinstance(out, torch.Tensor):
          return out
        if getattr(out, "logits", None) is not None:
          return out.logits
        return out.pooler_output.flatten(1)

    return Wrapped().eval()


def export_onnx(module: nn.Module, variables: Mapping[str, Any], path: str,
                image_size: int) -> None:
  """The PyTorch model through `torch.onnx.export`: input `pixel_values` (B, 3, H, W) NCHW,
  output `logits`; the batch axis is dynamic."""
  import torch
  model = _Logits(torch_model(module, variables))
  # An example batch of 2: torch.export specialises a size-1 dimension to the constant 1.
  dummy = torch.zeros(2, 3, image_size, image_size)
  batch = torch.export.Dim("batch", min=1, max=1024)
  torch.onnx.export(model, (dummy,), path, input_names=["pixel_values"],
                    output_names=["logits"], dynamic_shapes={"pixel_values": {0: batch}},
                    external_data=False)
