"""Frozen features of a model over an in-memory image set, batched and sharded over the mesh."""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from kt_jax import sharding
from kt_jax.models.registry import InputSpec


def normalise(images_uint8: jax.Array, spec: InputSpec) -> jax.Array:
  """uint8 NHWC at any size -> the model's float input (resized on device, then normalised)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if (h, w) != (spec.image_size, spec.image_size):
    x = jax.image.resize(x, (b, spec.image_size, spec.image_size, c), "bicubic")
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return (x - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)


def make_feature_fn(module: nn.Module, spec: InputSpec, keys: Sequence[str]) -> Callable:
  def fn(variables, images):
    out = module.apply(variables, normalise(images, spec))
    feats = {k: out[k] for k in keys if k in out}
    if "x_norm_patchtokens" in out:  # DINOv2's linear-probe feature: mean of patch tokens
      feats["mean_patchtoken"] = out["x_norm_patchtokens"].mean(axis=1)
    return jax.tree.map(lambda a: a.astype(jnp.float32), feats)
  return fn


def extract_features(module: nn.Module, variables, images: np.ndarray, spec: InputSpec,
                     batch_size: int = 64, keys: Sequence[str] = ("x_norm_clstoken",),
                     mesh=None, desc: str = "features") -> dict[str, np.ndarray]:
  """Runs `module` over uint8 NHWC `images`; returns float32 NumPy features per key."""
  mesh = mesh or sharding.make_mesh()
  batch_size = -(-batch_size // sharding.batch_divisor(mesh)) * sharding.batch_divisor(mesh)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  fn = jax.jit(make_feature_fn(module, spec, keys),
               out_shardings=sharding.replicated(mesh))
  chunks: dict[str, list[np.ndarray]] = {}
  for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
    batch, n = sharding.pad_to_multiple(images[start:start + batch_size], batch_size)
    out = fn(variables, sharding.put_batch(batch, mesh))
    for k, v in out.items():
      chunks.setdefault(k, []).append(sharding.to_host(v)[:n])
  return {k: np.concatenate(v) for k, v in chunks.items()}
