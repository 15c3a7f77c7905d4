"""DINOv3 ViTs from transformers (`DINOv3ViTModel` / `DINOv3ViTBackbone`, model_type
`dinov3_vit`) to `vit.VisionTransformer` with rotary position embedding.

Mapping: q/k/v projections fused into `qkv` (DINOv3 has no key bias: its third of the fused
bias is zero, which is exact); `layer_scale{1,2}.lambda1` -> `ls{1,2}/gamma`; the plain MLP's
`up_proj`/`down_proj` -> `fc1`/`fc2`; the gated MLP's [`gate_proj`, `up_proj`] -> `w12`,
`down_proj` -> `w3`. Blocks are `layer.N.` as `save_pretrained` writes them, or `model.layer.N.`.
"""
import re
from typing import Any, Mapping

import numpy as np

from kt_jax.convert import strict
from kt_jax.models.dinov3 import DINOv3ViT

LAYOUTS = ("dinov3",)
_BLOCK = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.*)$")


def _normalise(state: Mapping[str, Any]) -> dict[str, Any]:
  """`model.layer.N.x` -> `layer.N.x`, and a `dinov3.`/`backbone.` wrapper removed."""
  for prefix in ("dinov3.", "backbone.", "model."):
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  out = {}
  for k, v in state.items():
    m = _BLOCK.match(k)
    out[f"layer.{m.group(1)}.{m.group(2)}" if m else k] = v
  return out


def detect_layout(keys) -> str | None:
  keys = set(_normalise(dict.fromkeys(keys)))
  if ("embeddings.cls_token" in keys and "embeddings.patch_embeddings.weight" in keys
      and "embeddings.position_embeddings" not in keys
      and any(_BLOCK.match(k) and ".attention.o_proj." in k for k in keys)):
    return "dinov3"
  return None


def infer_config(state: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None) -> dict:
  hf = dict(hf_config or {})
  shape = lambda k: tuple(np.shape(state[k]))
  width = shape("embeddings.cls_token")[-1]
  layers = [int(m.group(1)) for k in state if (m := _BLOCK.match(k))]
  gated = "layer.0.mlp.gate_proj.weight" in state
  hidden = shape("layer.0.mlp.up_proj.weight")[0]
  registers = (shape("embeddings.register_tokens")[1] if "embeddings.register_tokens" in state
               else 0)
  ratio = hidden / width
  if int(width * ratio) != hidden:
    ratio = (hidden + 0.5) / width
  side = hf.get("image_size", 224)
  patch = shape("embeddings.patch_embeddings.weight")[-1]
  return dict(
      patch_size=patch, embed_dim=width, depth=1 + max(layers),
      num_heads=int(hf.get("num_attention_heads", max(width // 64, 1))), mlp_ratio=ratio,
      ffn="gated" if gated else "mlp", act=hf.get("hidden_act", "gelu"),
      num_register_tokens=registers,
      layerscale_init=1.0 if "layer.0.layer_scale1.lambda1" in state else None,
      pos_grid=(side[0] if isinstance(side, (list, tuple)) else side) // patch,
      qkv_bias=any(f"layer.0.attention.{n}_proj.bias" in state for n in "qkv"),
      proj_bias="layer.0.attention.o_proj.bias" in state,
      ffn_bias="layer.0.mlp.down_proj.bias" in state,
      norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
      rope_theta=float(hf.get("rope_theta", 100.0)))


def _produce(source: strict.SourceTensors, cfg: Mapping[str, Any]) -> dict:
  d = cfg["embed_dim"]
  take = lambda k: source.take(k)
  patch = take("embeddings.patch_embeddings.weight")
  out = {"patch_embed/kernel": None if patch is None else patch.transpose(2, 3, 1, 0),
         "patch_embed/bias": take("embeddings.patch_embeddings.bias"),
         "cls_token": take("embeddings.cls_token"),
         "norm/scale": take("norm.weight"), "norm/bias": take("norm.bias")}
  mask = take("embeddings.mask_token")
  out["mask_token"] = None if mask is None else mask.reshape(1, d)
  if cfg["num_register_tokens"]:
    out["register_tokens"] = take("embeddings.register_tokens")
  else:
    source.skip("embeddings.register_tokens")  # (1, 0, D) when a config has none

  def linear(*keys):  # torch (out, in) tensors concatenated along `out`
    arrays = [take(k) for k in keys]
    return None if any(a is None for a in arrays) else strict.concat_rows(arrays)

  for i in range(cfg["depth"]):
    b, f = f"layer.{i}.", f"blocks_{i}/"
    qkv = linear(*[b + f"attention.{n}_proj.weight" for n in "qkv"])
    out[f + "attn/qkv/kernel"] = None if qkv is None else qkv.T
    if cfg["qkv_bias"]:  # a projection without bias (DINOv3's key) contributes zeros
      out[f + "attn/qkv/bias"] = np.concatenate([
          take(b + f"attention.{n}_proj.bias") if b + f"attention.{n}_proj.bias" in source
          else np.zeros(d, np.float32) for n in "qkv"])
    ffn = ({"mlp/w12": ("gate_proj", "up_proj"), "mlp/w3": ("down_proj",)}
           if cfg["ffn"] == "gated" else {"mlp/fc1": ("up_proj",), "mlp/fc2": ("down_proj",)})
    pieces = {"attn/proj": ("attention.o_proj",), **{
        k: tuple("mlp." + n for n in v) for k, v in ffn.items()}}
    for name, keys in pieces.items():
      weight = linear(*[b + k + ".weight" for k in keys])
      out[f + name + "/kernel"] = None if weight is None else weight.T
      if (cfg["proj_bias"] if name == "attn/proj" else cfg["ffn_bias"]):
        out[f + name + "/bias"] = linear(*[b + k + ".bias" for k in keys])
    for n in ("norm1", "norm2"):
      out[f + n + "/scale"], out[f + n + "/bias"] = take(b + n + ".weight"), take(b + n + ".bias")
    if cfg["layerscale_init"] is not None:
      out[f + "ls1/gamma"] = take(b + "layer_scale1.lambda1")
      out[f + "ls2/gamma"] = take(b + "layer_scale2.lambda1")
  return out


def convert_state_dict(state: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None):
  """A transformers DINOv3 ViT state dict -> (VisionTransformer, {'params': ...}), strict."""
  state = _normalise(state)
  if detect_layout(state) is None:
    raise strict.CheckpointMismatchError(
        "Not a DINOv3 ViT checkpoint; first keys: " + ", ".join(sorted(state)[:8]))
  cfg = infer_config(state, hf_config)
  module = DINOv3ViT(**cfg)
  source = strict.SourceTensors(state)
  produced = _produce(source, cfg)
  side = cfg["pos_grid"] * cfg["patch_size"]
  expected = strict.expected_shapes(module, np.zeros((1, side, side, 3), np.float32))
  params = strict.assemble(expected, produced, source, what="dinov3 ViT checkpoint")
  return module, {"params": params}
