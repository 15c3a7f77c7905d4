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


def extract_source_features(module: nn.Module, variables, source, spec: InputSpec,
                            batch_size: int = 256, keys: Sequence[str] = ("x_norm_clstoken",),
                            mesh=None, desc: str = "features", workers: int = 0,
                            crop_pct: float = 0.875) -> dict[str, np.ndarray]:
  """Features of every decodable image of a grain source (a task on disk), at any size.

  Each process reads only its share of every global batch (grain, by process index), which is
  decoded, resized (short side to size / crop_pct, bicubic) and centre-cropped to the model's
  size in the loader, then assembled into one global batch split over the mesh's data axes.
  Features come back to every process. Returns the features per key plus "label", "id" (the
  source index of each row) and "bad_records" (undecodable images skipped, as in training).
  """
  from kt_jax.data import pipeline, transforms  # pylint: disable=g-import-not-at-top
  mesh = mesh or sharding.make_mesh()
  divisor = int(np.lcm(sharding.batch_divisor(mesh), jax.process_count()))
  batch_size = -(-batch_size // divisor) * divisor
  loader = pipeline.make_eval_loader(
      source, [transforms.Decode(), transforms.ResizeCenterCrop(spec.image_size, crop_pct)],
      batch_size, worker_count=workers)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  feature_fn = make_feature_fn(module, spec, keys)

  def fn(variables, batch):
    out = feature_fn(variables, batch["image"])
    return dict(out, label=batch["label"], id=batch["id"], valid=batch["valid"])
  fn = jax.jit(fn, out_shardings=sharding.replicated(mesh))
  chunks: dict[str, list[np.ndarray]] = {}
  iterator = iter(loader)
  total = -(-len(source) // batch_size)
  for local in tqdm(iterator, desc=desc, unit="batch", total=total, leave=False):
    local = {k: np.asarray(local[k]) for k in ("image", "label", "id", "valid")}
    out = {k: sharding.to_host(v) for k, v in fn(variables, sharding.global_batch(local, mesh))
           .items()}
    keep = out.pop("valid").astype(bool)
    for k, v in out.items():
      chunks.setdefault(k, []).append(v[keep])
  result = {k: np.concatenate(v) for k, v in chunks.items()}
  order = np.argsort(result["id"], kind="stable")  # source order, whatever the sharding
  result = {k: v[order] for k, v in result.items()}
  result["bad_records"] = pipeline.bad_records(iterator)
  return result
