"""Uniform random patch masks, as Proteus' collate function draws them (not iBOT blocks).

A `mask_probability` share of the batch is masked. With one ratio every masked sample hides
exactly int(N * ratio) patches; with a range (lo, hi) sample i hides int(N * u_i) patches,
u_i uniform in its own slice [p_i, p_{i+1}] of linspace(lo, hi, n_masked + 1). The official
recipe masks the first half of the batch (`mask_first_n`); otherwise the masked samples are
shuffled through the batch. Drawn on device from a key, so a resumed run redraws them exactly.
"""
from typing import Sequence

import jax
import jax.numpy as jnp


def mask_counts(key, batch_size: int, num_patches: int, mask_probability: float,
                mask_ratio: float | Sequence[float], mask_first_n: bool = True) -> jax.Array:
  """Number of masked patches per sample, (B,) int32."""
  n_masked = int(batch_size * mask_probability)
  key_ratio, key_order = jax.random.split(key)
  ratio = tuple(mask_ratio) if isinstance(mask_ratio, (tuple, list)) else (mask_ratio,)
  if len(ratio) == 2:
    edges = jnp.linspace(ratio[0], ratio[1], n_masked + 1)
    u = jax.random.uniform(key_ratio, (n_masked,), minval=edges[:-1], maxval=edges[1:])
    counts = jnp.floor(num_patches * u).astype(jnp.int32)
  elif len(ratio) == 1:
    counts = jnp.full((n_masked,), int(num_patches * ratio[0]), jnp.int32)
  else:
    raise ValueError(f"mask_ratio is one value or a (low, high) pair, not {mask_ratio!r}")
  counts = jnp.concatenate([counts, jnp.zeros((batch_size - n_masked,), jnp.int32)])
  if not mask_first_n:
    counts = jax.random.permutation(key_order, counts)
  return counts


def random_masks(key, counts: jax.Array, num_patches: int) -> jax.Array:
  """(B, N) bool masks with exactly counts[b] True entries at uniformly random positions."""
  noise = jax.random.uniform(key, (counts.shape[0], num_patches))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return rank < counts[:, None]


def proteus_masks(key, batch_size: int, num_patches: int, mask_probability: float,
                  mask_ratio, mask_first_n: bool = True) -> jax.Array:
  key_counts, key_pos = jax.random.split(key)
  counts = mask_counts(key_counts, batch_size, num_patches, mask_probability, mask_ratio,
                       mask_first_n)
  return random_masks(key_pos, counts, num_patches)
