"""DINOv2 ViT weights between PyTorch layouts and our Flax `VisionTransformer`.

One table of (Flax path, source keys, transform) per layout drives both directions, so import
and export cannot drift apart. Layouts:
  dinov2: the official release (`blocks.N.attn.qkv`, `ls1.gamma`, `mlp.w12`, chunked
          `blocks.C.N` too).
  timm:   the official layout with `reg_token` and no `mask_token`; a packed SwiGLU is
          `mlp.fc1`/`mlp.fc2`.
  hf5:    transformers 5.x `Dinov2Model` / `Dinov2WithRegistersModel` (`attention.q_proj`...).
  hf4:    transformers 4.x (`attention.attention.query`, `attention.output.dense`,
          `mlp.weights_in`/`weights_out`).
"""
import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from kt_jax.convert import strict
from kt_jax.models.vit import VisionTransformer

LAYOUTS = ("dinov2", "timm", "hf5", "hf4")

_NAMES = {
    "dinov2": dict(cls="cls_token", pos="pos_embed", mask="mask_token", reg="register_tokens",
                   patch="patch_embed.proj", block="blocks.{i}.", norm1="norm1", norm2="norm2",
                   qkv=("attn.qkv",), proj="attn.proj", ls1="ls1.gamma", ls2="ls2.gamma",
                   fc1="mlp.fc1", fc2="mlp.fc2", w12=("mlp.w12",), w3="mlp.w3", norm="norm"),
    "hf5": dict(cls="embeddings.cls_token", pos="embeddings.position_embeddings",
                mask="embeddings.mask_token", reg="embeddings.register_tokens",
                patch="embeddings.patch_embeddings.projection", block="encoder.layer.{i}.",
                norm1="norm1", norm2="norm2",
                qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
                proj="attention.o_proj", ls1="layer_scale1.lambda1", ls2="layer_scale2.lambda1",
                fc1="mlp.fc1", fc2="mlp.fc2", w12=("mlp.gate_proj", "mlp.up_proj"),
                w3="mlp.down_proj", norm="layernorm"),
}
_NAMES["timm"] = dict(_NAMES["dinov2"], reg="reg_token", mask=None, w12=("mlp.fc1",),
                      w3="mlp.fc2")
_NAMES["hf4"] = dict(_NAMES["hf5"], proj="attention.output.dense",
                     qkv=("attention.attention.query", "attention.attention.key",
                          "attention.attention.value"),
                     w12=("mlp.weights_in",), w3="mlp.weights_out")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One Flax leaf and where it lives in a PyTorch state dict.

  kind: 'copy' (same array), 'linear' (torch (out, in) -> kernel (in, out), several source
  keys concatenated along `out`: fused qkv, packed SwiGLU), 'conv' (OIHW -> HWIO).
  """
  flax: str
  torch: tuple[str, ...]
  kind: str


def _table(cfg: Mapping[str, Any], layout: str) -> list[Entry]:
  n = _NAMES[layout]
  e = [Entry("patch_embed/kernel", (n["patch"] + ".weight",), "conv"),
       Entry("patch_embed/bias", (n["patch"] + ".bias",), "copy"),
       Entry("cls_token", (n["cls"],), "copy"),
       Entry("pos_embed", (n["pos"],), "copy"),
       Entry("norm/scale", (n["norm"] + ".weight",), "copy"),
       Entry("norm/bias", (n["norm"] + ".bias",), "copy")]
  if n["mask"]:
    e.append(Entry("mask_token", (n["mask"],), "copy"))
  if cfg["num_register_tokens"]:
    e.append(Entry("register_tokens", (n["reg"],), "copy"))
  swiglu = cfg["ffn"] == "swiglu"
  for i in range(cfg["depth"]):
    b, f = n["block"].format(i=i), f"blocks_{i}/"
    linears = [("attn/qkv", n["qkv"], cfg["qkv_bias"]), ("attn/proj", (n["proj"],), cfg["proj_bias"])]
    if swiglu:
      linears += [("mlp/w12", n["w12"], cfg["ffn_bias"]), ("mlp/w3", (n["w3"],), cfg["ffn_bias"])]
    else:
      linears += [("mlp/fc1", (n["fc1"],), cfg["ffn_bias"]), ("mlp/fc2", (n["fc2"],), cfg["ffn_bias"])]
    for name, keys, bias in linears:
      e.append(Entry(f + name + "/kernel", tuple(b + k + ".weight" for k in keys), "linear"))
      if bias:
        e.append(Entry(f + name + "/bias", tuple(b + k + ".bias" for k in keys), "linear"))
    for norm in ("norm1", "norm2"):
      e.append(Entry(f + norm + "/scale", (b + n[norm] + ".weight",), "copy"))
      e.append(Entry(f + norm + "/bias", (b + n[norm] + ".bias",), "copy"))
    if cfg["layerscale_init"] is not None:
      e.append(Entry(f + "ls1/gamma", (b + n["ls1"],), "copy"))
      e.append(Entry(f + "ls2/gamma", (b + n["ls2"],), "copy"))
  return e


def _to_flax(entry: Entry, source: strict.SourceTensors) -> np.ndarray | None:
  arrays = [source.take(k) for k in entry.torch]
  if any(a is None for a in arrays):
    return None
  if entry.kind == "conv":
    return arrays[0].transpose(2, 3, 1, 0)
  if entry.kind == "linear":
    return np.concatenate(arrays, axis=0).T if arrays[0].ndim == 2 else np.concatenate(arrays)
  return arrays[0]


def _to_torch(entry: Entry, value: np.ndarray) -> dict[str, np.ndarray]:
  value = np.asarray(value, np.float32)
  if entry.kind == "conv":  # contiguous: safetensors writes the raw buffer, not the view.
    return {entry.torch[0]: np.ascontiguousarray(value.transpose(3, 2, 0, 1))}
  if entry.kind == "linear":
    parts = np.split(value.T if value.ndim == 2 else value, len(entry.torch), axis=0)
    return {k: np.ascontiguousarray(p) for k, p in zip(entry.torch, parts)}
  return {entry.torch[0]: value}


# --------------------------------------------------------------------------------------------
# Recognising a layout and reading the architecture off the tensors.


def _unchunk(state: Mapping[str, Any]) -> dict[str, Any]:
  """`blocks.C.N.x` (FSDP chunks, padded with Identity) -> `blocks.N.x`."""
  out = {}
  for k, v in state.items():
    m = re.match(r"^blocks\.\d+\.(\d+)\.(.*)$", k)
    out[f"blocks.{m.group(1)}.{m.group(2)}" if m else k] = v
  return out


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
  for prefix in ("module.", "backbone.", "dinov2.", "model."):
    if state and all(k.startswith(prefix) or k.startswith("classifier.") for k in state):
      state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
  return dict(state)


def detect_layout(keys) -> str | None:
  keys = set(keys)
  if "embeddings.cls_token" in keys and "embeddings.position_embeddings" in keys:
    return "hf4" if any(".attention.attention.query." in k for k in keys) else "hf5"
  if "cls_token" in keys and "pos_embed" in keys and any(k.startswith("blocks.") for k in keys):
    return "dinov2" if ("mask_token" in keys or "register_tokens" in keys) else "timm"
  return None


def infer_config(state: Mapping[str, Any], layout: str,
                 hf_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """VisionTransformer fields implied by the tensors (and an HF config.json, when given).

  Weights do not say how many heads a model has: we take the HF config's value or DINOv2's
  64-wide heads.
  """
  n, hf = _NAMES[layout], dict(hf_config or {})
  shape = lambda k: tuple(np.shape(state[k]))
  width = shape(n["cls"])[-1]
  block_re = re.compile("^" + re.escape(n["block"]).replace(r"\{i\}", r"(\d+)"))
  blocks = [int(m.group(1)) for k in state if (m := block_re.match(k))]
  if not blocks:
    raise strict.CheckpointMismatchError(
        f"A {layout} ViT checkpoint without blocks (no {n['block'].format(i='N')}* keys); "
        "first keys: " + ", ".join(sorted(state)[:8]))
  depth = 1 + max(blocks)
  b0 = n["block"].format(i=0)
  if layout == "timm":
    fc1_out, fc2_in = shape(b0 + "mlp.fc1.weight")[0], shape(b0 + "mlp.fc2.weight")[1]
    swiglu = fc1_out != fc2_in
  else:
    swiglu = any(k.startswith(b0 + n["w12"][0]) for k in state)
  if swiglu:
    mlp_ratio = float(hf.get("mlp_ratio", 4.0))
  else:
    mlp_ratio = shape(b0 + n["fc1"] + ".weight")[0] / width
  num_pos = shape(n["pos"])[1] - 1
  registers = shape(n["reg"])[1] if n["reg"] in state else 0
  cfg = dict(
      patch_size=shape(n["patch"] + ".weight")[-1],
      embed_dim=width,
      depth=depth,
      num_heads=int(hf.get("num_attention_heads", width // 64)),
      mlp_ratio=mlp_ratio,
      ffn="swiglu" if swiglu else "mlp",
      num_register_tokens=registers,
      layerscale_init=1.0 if (b0 + n["ls1"]) in state else None,
      pos_grid=math.isqrt(num_pos),
      # How the checkpoint's own code resamples position embeddings (see VisionTransformer).
      pos_interp_offset=0.1 if (layout == "dinov2" and not registers) else 0.0,
      pos_interp_antialias=bool(registers) or layout == "timm",
      qkv_bias=(b0 + n["qkv"][0] + ".bias") in state,
      proj_bias=(b0 + n["proj"] + ".bias") in state,
      ffn_bias=(b0 + (n["w3"] if swiglu else n["fc2"]) + ".bias") in state,
      norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
  )
  if cfg["pos_grid"] ** 2 != num_pos:
    raise strict.CheckpointMismatchError(
        f"Position embeddings hold {num_pos} patches, not a square grid.")
  return cfg


def convert_state_dict(state: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                       hf_config: Mapping[str, Any] | None = None
                       ) -> tuple[VisionTransformer, dict]:
  """Any supported PyTorch ViT state dict -> (module, {'params': ...}).

  `config` (VisionTransformer fields) overrides what is read off the tensors; strict: raises
  CheckpointMismatchError naming every missing, unexpected and mis-shaped key.
  """
  state = _unchunk(_strip_prefixes(state))
  layout = detect_layout(state)
  if layout is None:
    raise strict.CheckpointMismatchError(
        "Not a ViT checkpoint in any known layout (dinov2, timm, transformers); first keys: " +
        ", ".join(sorted(state)[:8]))
  cfg = infer_config(state, layout, hf_config)
  cfg.update(config or {})
  module = VisionTransformer(**cfg)
  source = strict.SourceTensors(state)
  source.skip(*[k for k in state if k.startswith("classifier.")])
  produced = {e.flax: _to_flax(e, source) for e in _table(cfg, layout)}
  if layout == "timm":  # timm drops the (unused) mask token; masking then starts from zeros.
    produced["mask_token"] = np.zeros((1, cfg["embed_dim"]), np.float32)
  side = cfg["pos_grid"] * cfg["patch_size"]
  expected = strict.expected_shapes(module, np.zeros((1, side, side, 3), np.float32))
  params = strict.assemble(expected, produced, source, what=f"{layout} ViT checkpoint")
  return module, {"params": params}


def params_to_state_dict(module: VisionTransformer, params: Mapping[str, Any],
                         layout: str = "dinov2") -> dict[str, np.ndarray]:
  """Flax params -> a PyTorch state dict (NumPy arrays) in `layout`."""
  cfg = {f.name: getattr(module, f.name) for f in dataclasses.fields(VisionTransformer)
         if f.name not in ("parent", "name")}
  flat = traverse_util.flatten_dict(params, sep="/")
  state = {}
  for entry in _table(cfg, layout):
    state.update(_to_torch(entry, np.asarray(flat[entry.flax])))
  return state


# --------------------------------------------------------------------------------------------
# Hugging Face directories.


def read_hf_dir(path: str) -> tuple[dict, dict]:
  """(state dict, config.json) of a transformers model directory, without transformers."""
  with open(os.path.join(path, "config.json")) as f:
    hf_config = json.load(f)
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    files = sorted(f for f in os.listdir(path) if f.endswith(".bin"))
  if not files:
    raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin in {path}")
  state = {}
  for f in files:
    state.update(strict.load_torch_file(os.path.join(path, f)))
  return state, hf_config


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else x  # transformers' config validator wants an int


def export_hf(module: VisionTransformer, params: Mapping[str, Any], out_dir: str) -> None:
  """Writes config.json + model.safetensors that `transformers.AutoModel` loads offline.

  transformers resamples position embeddings by target size (no 0.1 offset): at the native
  resolution outputs are identical; at other sizes an official-layout model exported here
  follows transformers' convention.
  """
  from safetensors.numpy import save_file
  import transformers

  os.makedirs(out_dir, exist_ok=True)
  registers = module.num_register_tokens
  kwargs = dict(hidden_size=module.embed_dim, num_hidden_layers=module.depth,
                num_attention_heads=module.num_heads, mlp_ratio=_int_if_whole(module.mlp_ratio),
                patch_size=module.patch_size, image_size=module.pos_grid * module.patch_size,
                layer_norm_eps=module.norm_eps, qkv_bias=module.qkv_bias,
                use_swiglu_ffn=module.ffn == "swiglu", hidden_act="gelu",
                layerscale_value=1.0)
  if module.layerscale_init is None:
    raise ValueError("transformers' Dinov2 always has LayerScale; this model has none.")
  if not (module.proj_bias and module.ffn_bias):
    raise ValueError("transformers' Dinov2 always has projection and FFN biases.")
  if registers:
    config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
  else:
    config = transformers.Dinov2Config(**kwargs)
  config.architectures = ["Dinov2WithRegistersModel" if registers else "Dinov2Model"]
  config.save_pretrained(out_dir)
  state = params_to_state_dict(module, params, "hf5")
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def export_dinov2(module: VisionTransformer, params: Mapping[str, Any], path: str) -> None:
  """Writes a .pth in the official DINOv2 layout (loadable by `dinov2.models`' ViTs)."""
  import torch
  state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_state_dict(module, params).items()}
  torch.save(state, path)
