"""VQGAN weights in and out: transformers' `JanusVQVAE` layout (and taming's `VQModel`).

Both layouts share their keys (`encoder.down.0.block.1.norm1.weight`, `quantize.embedding.weight`,
`quant_conv`, `post_quant_conv`, `decoder.mid.attn_1.q.weight`, ...) and differ in one place:
the decoder's `up.N` counts from the lowest resolution in transformers (and LlamaGen) and from
the highest in taming. The attention blocks, which sit only at the lowest resolution, tell
which one a state dict is. The architecture (channels, levels, blocks, codebook) is read from
the tensor shapes, so any JanusVQVAE config imports, e.g. a full Janus checkpoint's `vqmodel.`
part, whose other keys are ignored.

The codebook lookup: Janus/LlamaGen's VQ-16 was trained with l2-normalised codes and
transformers' `JanusVQVAE.decode` normalises them, so transformers-layout imports default to
`l2_normalize=True`; taming's quantiser has no normalisation (`False`). (transformers'
`JanusVQVAE.encode` looks codes up *without* normalising, unlike LlamaGen's training code;
for a codebook of unit rows, as the parity test uses, both agree.)
"""
import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kt_jax.convert import strict
from kt_jax.models import vqgan as vqgan_model

# Prefixes under which whole-model checkpoints nest the VQ model.
_PREFIXES = ("model.vqmodel.", "vqmodel.", "vq_model.", "first_stage_model.")
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _strip(state: Mapping[str, Any]) -> tuple[dict, str]:
  for prefix in _PREFIXES:
    if f"{prefix}quantize.embedding.weight" in state:
      return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, prefix
  return dict(state), ""


def matches(keys: Iterable[str]) -> bool:
  keys = set(keys)
  return any(f"{p}quantize.embedding.weight" in keys and f"{p}encoder.conv_in.weight" in keys
             for p in ("",) + _PREFIXES)


def _levels(keys, part: str) -> int:
  found = {int(m.group(1)) for k in keys if (m := re.match(rf"{part}\.(\d+)\.", k))}
  return max(found) + 1


def detect_layout(keys: Iterable[str]) -> str:
  """'transformers' (decoder up.0 = lowest resolution) or 'taming' (up.0 = highest)."""
  keys = list(keys)
  levels = _levels(keys, "decoder.up")
  if levels == 1 or any(k.startswith("decoder.up.0.attn.") for k in keys):
    return "transformers"
  if any(k.startswith(f"decoder.up.{levels - 1}.attn.") for k in keys):
    return "taming"
  raise strict.CheckpointMismatchError("VQGAN state dict without decoder attention blocks: "
                                       "neither the transformers nor the taming layout.")


def architecture(state: Mapping[str, Any]) -> dict:
  """VQGAN constructor fields read from tensor shapes (a stripped state dict)."""
  shape = lambda k: tuple(np.shape(state[k]))  # noqa: E731
  keys = list(state)
  base = shape("encoder.conv_in.weight")[0]
  levels = _levels(keys, "encoder.down")
  blocks = len({k.split(".")[4] for k in keys if k.startswith("encoder.down.0.block.")})
  multiplier = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // base
                     for i in range(levels))
  size, dim = shape("quantize.embedding.weight")
  return dict(base_channels=base, channel_multiplier=multiplier, num_res_blocks=blocks,
              latent_channels=shape("encoder.conv_out.weight")[0], codebook_size=size,
              codebook_dim=dim, out_channels=shape("decoder.conv_out.weight")[0],
              l2_normalize=detect_layout(keys) == "transformers")


def torch_key(path: str, levels: int, layout: str = "transformers") -> str:
  """'decoder/up_0_block_1/norm1/scale' -> 'decoder.up.0.block.1.norm1.weight'."""
  *modules, leaf = path.split("/")
  if modules == ["quantize"]:
    return "quantize.embedding.weight"
  parts = []
  for name in modules:
    m = re.fullmatch(r"(down|up)_(\d+)_(block_\d+|attn_\d+|downsample|upsample)", name)
    if m:
      index = int(m.group(2))
      if m.group(1) == "up" and layout == "taming":
        index = levels - 1 - index
      parts += [m.group(1), str(index), m.group(3).replace("_", ".")]
    elif name.startswith("mid_"):
      parts += ["mid", name.removeprefix("mid_")]
    else:
      parts.append(name)
  return ".".join(parts + [_LEAVES[leaf]])


def _param_shapes(module: vqgan_model.VQGAN) -> dict[str, tuple[int, ...]]:
  size = max(32, module.downsampling)
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  params = dict(variables["params"])
  if vqgan_model.EMA_COLLECTION in variables:  # an EMA codebook lives outside params
    params["quantize"] = {"embedding": variables[vqgan_model.EMA_COLLECTION]["quantize"]
                          ["embedding"]}
  flat = traverse_util.flatten_dict(params, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _to_flax(tensor: np.ndarray, ndim: int) -> np.ndarray:
  if tensor.ndim == 4 and ndim == 4:
    return tensor.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return tensor  # codebook (K, D), biases, norms


def _to_torch(array: np.ndarray, path: str) -> np.ndarray:
  return array.transpose(3, 2, 0, 1) if path.endswith("kernel") else array


def ema_variables(embedding) -> dict:
  """The `codebook_ema` collection of an EMA codebook starting at `embedding`."""
  embedding = jnp.asarray(embedding, jnp.float32)
  return {"quantize": {"embedding": embedding, "embed_sum": embedding,
                       "cluster_size": jnp.ones((embedding.shape[0],), jnp.float32),
                       "updates": jnp.zeros((), jnp.int32)}}


def convert(state_dict: Mapping[str, Any], **overrides) -> tuple[vqgan_model.VQGAN, dict]:
  """(VQGAN, variables) from a JanusVQVAE/taming state dict; strict about every key.

  `overrides` go to the constructor (e.g. `l2_normalize`, `ema=True`, which moves the codebook
  into the `codebook_ema` collection).
  """
  state, _ = _strip(state_dict)
  if "quantize.embedding.weight" not in state:
    raise strict.CheckpointMismatchError("Not a VQGAN state dict (no quantize.embedding.weight); "
                                         "first keys: " + ", ".join(sorted(state)[:8]))
  layout = detect_layout(state)
  fields = {**architecture(state), **overrides}
  module = vqgan_model.VQGAN(**fields)
  expected = _param_shapes(module)
  levels = len(module.channel_multiplier)
  source = strict.SourceTensors(state)
  # taming checkpoints carry their training loss (LPIPS, discriminator) under `loss.`.
  source.skip(*[k for k in source.keys() if k.startswith("loss.")])
  produced = {}
  for path, shape in expected.items():
    tensor = source.take(torch_key(path, levels, layout))
    produced[path] = None if tensor is None else _to_flax(tensor, len(shape))
  params = strict.assemble(expected, produced, source, what=f"VQGAN ({layout} layout) state dict")
  variables = {"params": params}
  if module.ema:
    variables[vqgan_model.EMA_COLLECTION] = ema_variables(params.pop("quantize")["embedding"])
  return module, variables


def export(module: vqgan_model.VQGAN, variables: Mapping[str, Any],
           layout: str = "transformers") -> dict[str, np.ndarray]:
  """The inverse of `convert`: a float32 NumPy state dict in `layout`."""
  params = dict(variables["params"])
  if module.ema:
    params["quantize"] = {"embedding": variables[vqgan_model.EMA_COLLECTION]["quantize"]
                          ["embedding"]}
  levels = len(module.channel_multiplier)
  flat = traverse_util.flatten_dict(params, sep="/")
  return {torch_key(path, levels, layout): _to_torch(np.asarray(value, np.float32), path)
          for path, value in flat.items()}


def janus_config(module: vqgan_model.VQGAN, image_size: int = 256) -> dict:
  """`transformers.JanusVQVAEConfig` kwargs for `module` (num_patches: the token grid side)."""
  return dict(embed_dim=module.codebook_dim, num_embeddings=module.codebook_size,
              latent_channels=module.latent_channels, base_channels=module.base_channels,
              channel_multiplier=list(module.channel_multiplier),
              num_res_blocks=module.num_res_blocks, out_channels=module.out_channels,
              num_patches=image_size // module.downsampling)


def export_hf(module: vqgan_model.VQGAN, variables: Mapping[str, Any], out_dir: str,
              image_size: int = 256) -> None:
  """config.json + model.safetensors that `transformers.JanusVQVAE.from_pretrained` loads;
  `image_size` sets the token grid its `decode` expects (num_patches)."""
  import os
  from safetensors.numpy import save_file
  import transformers
  os.makedirs(out_dir, exist_ok=True)
  transformers.JanusVQVAEConfig(**janus_config(module, image_size)).save_pretrained(out_dir)
  state = {k: np.ascontiguousarray(v) for k, v in export(module, variables).items()}
  save_file(state, os.path.join(out_dir, "model.safetensors"))
