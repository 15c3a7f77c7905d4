"""CLIP and SigLIP / SigLIP2 vision towers from transformers checkpoints to `ContrastiveViT`.

Layouts (transformers 5.x `save_pretrained`; the towers share their encoder's key names):
  clip:    `CLIPVisionModel` (`embeddings.class_embedding`, `pre_layrnorm`, ...), and the
           vision half of `CLIPVisionModelWithProjection` / `CLIPModel` under `vision_model.`
           with `visual_projection` (the text half, `logit_scale` are skipped).
  siglip:  `SiglipVisionModel` (conv patch embedding, `head.probe`), or `SiglipModel`'s half.
  siglip2: `Siglip2VisionModel`: the patch embedding is a Linear over patches flattened as
           (row, column, channel), which is a convolution with the kernel reshaped.
"""
import math
import re
from typing import Any, Mapping

import numpy as np

from kt_jax.convert import strict
from kt_jax.models.clip import ContrastiveViT

LAYOUTS = ("clip", "siglip", "siglip2")
_TOWER_PREFIX = "vision_model."
# Keys of a full image-text checkpoint that the vision tower does not use.
_OTHER_HALF = ("text_model.", "text_projection.", "logit_scale", "logit_bias")


def vision_state(state: Mapping[str, Any]) -> dict[str, Any]:
  """The vision tower's keys, without the `vision_model.` prefix of composite models."""
  if any(k.startswith(_TOWER_PREFIX) for k in state):
    return {k[len(_TOWER_PREFIX):] if k.startswith(_TOWER_PREFIX) else k: v
            for k, v in state.items()}
  return dict(state)


def detect_layout(keys) -> str | None:
  keys = set(keys)
  if "embeddings.class_embedding" in keys and "pre_layrnorm.weight" in keys:
    return "clip"
  if ("embeddings.patch_embedding.weight" in keys and "embeddings.class_embedding" not in keys
      and any(k.startswith("encoder.layers.") for k in keys)):
    return "siglip"  # siglip2 is told apart by the patch embedding's rank, in infer_config
  return None


def _vision_config(hf_config: Mapping[str, Any] | None) -> dict:
  hf = dict(hf_config or {})
  return dict(hf.get("vision_config") or hf)


def _mlp_ratio(hidden: int, width: int) -> float:
  """A ratio that `int(width * ratio)` turns back into `hidden` exactly (SigLIP so400m's
  4304/1152 would not survive float rounding otherwise)."""
  ratio = hidden / width
  return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def infer_config(state: Mapping[str, Any], layout: str,
                 hf_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  hf = _vision_config(hf_config)
  shape = lambda k: tuple(np.shape(state[k]))
  patch = shape("embeddings.patch_embedding.weight")
  if layout == "siglip" and len(patch) == 2:
    layout = "siglip2"
  width = patch[0]
  layers = [int(m.group(1)) for k in state if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))]
  if not layers:
    raise strict.CheckpointMismatchError(
        f"A {layout} vision tower without encoder layers (no encoder.layers.N.* keys).")
  clip = layout == "clip"
  num_pos = shape("embeddings.position_embedding.weight")[0] - int(clip)
  if layout == "siglip2":
    patch_size = int(hf.get("patch_size") or math.isqrt(patch[1] // 3))
  else:
    patch_size = patch[-1]
  cfg = dict(
      patch_size=patch_size, embed_dim=width, depth=1 + max(layers),
      num_heads=int(hf.get("num_attention_heads", max(width // 64, 1))),
      mlp_ratio=_mlp_ratio(shape("encoder.layers.0.mlp.fc1.weight")[0], width),
      pos_grid=math.isqrt(num_pos), class_token=clip, pre_norm=clip,
      patch_bias="embeddings.patch_embedding.bias" in state,
      act=hf.get("hidden_act", "quick_gelu" if clip else "gelu_pytorch_tanh"),
      pool="cls" if clip else ("map" if "head.probe" in state else "mean"),
      projection_dim=shape("visual_projection.weight")[0] if "visual_projection.weight" in state
      else 0,
      pos_resample="bilinear_antialias" if layout == "siglip2" else "bicubic",
      norm_eps=float(hf.get("layer_norm_eps", 1e-5 if clip else 1e-6)))
  if cfg["pos_grid"] ** 2 != num_pos:
    raise strict.CheckpointMismatchError(
        f"Position embeddings hold {num_pos} patches, not a square grid.")
  return cfg


def _linear(source, *keys):
  """torch (out, in) weights, or (out,) biases, concatenated along `out` -> Flax layout."""
  arrays = [source.take(k) for k in keys]
  if any(a is None for a in arrays):
    return None
  joined = strict.concat_rows(arrays)
  return joined.T if joined.ndim == 2 else joined


def _split_rows(source, key, part: slice):
  """Rows `part` of a fused tensor (MultiheadAttention's in_proj), in Flax layout."""
  array = source.take(key)
  if array is None:
    return None
  rows = array[part]
  return rows.T if rows.ndim == 2 else rows


def _produce(source: strict.SourceTensors, cfg: Mapping[str, Any], layout: str) -> dict:
  d = cfg["embed_dim"]
  out = {}
  patch = source.take("embeddings.patch_embedding.weight")
  if patch is not None:
    if patch.ndim == 2:  # SigLIP2's Linear over (row, column, channel) patches
      p = cfg["patch_size"]
      patch = patch.reshape(d, p, p, -1).transpose(1, 2, 3, 0)
    else:
      patch = patch.transpose(2, 3, 1, 0)
  out["patch_embed/kernel"] = patch
  if cfg["patch_bias"]:
    out["patch_embed/bias"] = source.take("embeddings.patch_embedding.bias")
  pos = source.take("embeddings.position_embedding.weight")
  out["pos_embed"] = None if pos is None else pos[None]
  if cfg["class_token"]:
    cls = source.take("embeddings.class_embedding")
    out["cls_token"] = None if cls is None else cls.reshape(1, 1, -1)
  norms = {"norm": "post_layernorm"}
  if cfg["pre_norm"]:
    norms["pre_norm"] = "pre_layrnorm"
  for i in range(cfg["depth"]):
    b, f = f"encoder.layers.{i}.", f"blocks_{i}/"
    norms.update({f + "norm1": b + "layer_norm1", f + "norm2": b + "layer_norm2"})
    linears = {"attn/qkv": [b + f"self_attn.{n}_proj" for n in "qkv"],
               "attn/proj": [b + "self_attn.out_proj"],
               "mlp/fc1": [b + "mlp.fc1"], "mlp/fc2": [b + "mlp.fc2"]}
    for name, keys in linears.items():
      out[f + name + "/kernel"] = _linear(source, *[k + ".weight" for k in keys])
      out[f + name + "/bias"] = _linear(source, *[k + ".bias" for k in keys])
  if cfg["pool"] == "map":
    probe = source.take("head.probe")
    out["head/probe"] = probe
    for suffix in ("weight", "bias"):
      leaf = "kernel" if suffix == "weight" else "bias"
      out[f"head/q/{leaf}"] = _split_rows(source, f"head.attention.in_proj_{suffix}", slice(0, d))
      out[f"head/kv/{leaf}"] = _split_rows(source, f"head.attention.in_proj_{suffix}",
                                           slice(d, None))
      for flax_name, torch_name in (("out", "attention.out_proj"), ("mlp/fc1", "mlp.fc1"),
                                    ("mlp/fc2", "mlp.fc2")):
        out[f"head/{flax_name}/{leaf}"] = _linear(source, f"head.{torch_name}.{suffix}")
    norms["head/norm"] = "head.layernorm"
  for flax_name, torch_name in norms.items():
    out[flax_name + "/scale"] = source.take(torch_name + ".weight")
    out[flax_name + "/bias"] = source.take(torch_name + ".bias")
  if cfg["projection_dim"]:
    out["projection/kernel"] = _linear(source, "visual_projection.weight")
  return out


def convert_state_dict(state: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None
                       ) -> tuple[ContrastiveViT, dict]:
  """A transformers CLIP / SigLIP / SigLIP2 vision state dict -> (module, {'params': ...});
  strict: one error naming every missing, unexpected and mis-shaped key."""
  state = vision_state(state)
  layout = detect_layout(state)
  if layout is None:
    raise strict.CheckpointMismatchError(
        "Not a CLIP/SigLIP vision tower; first keys: " + ", ".join(sorted(state)[:8]))
  cfg = infer_config(state, layout, hf_config)
  if cfg["pos_resample"] == "bilinear_antialias":
    layout = "siglip2"
  module = ContrastiveViT(**cfg)
  source = strict.SourceTensors(state)
  source.skip(*[k for k in state if k.startswith(_OTHER_HALF)])
  produced = _produce(source, cfg, layout)
  side = cfg["pos_grid"] * cfg["patch_size"]
  expected = strict.expected_shapes(module, np.zeros((1, side, side, 3), np.float32))
  params = strict.assemble(expected, produced, source, what=f"{layout} vision tower checkpoint")
  return module, {"params": params}
