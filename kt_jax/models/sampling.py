"""Sampling code grids from a `LatentTransformer`: temperature, top-k, top-p, a given prefix.

`sample` fills the positions >= `num_given` of a (B, seq_len) grid in raster order, keeping
the first `num_given` (DIGG's visible part). With `cached=True` (the default) it runs the
given prefix once through the parallel forward to fill the key/value cache and then one
`lax.fori_loop` of single-token steps; `cached=False` re-evaluates the whole sequence at every
position (the reference the cached path is tested against, and the benchmark's baseline).
The random draw at position t uses `fold_in(key, t)` in both, so both give identical indices
for the same key. `key` may also be one key per row (a (B,) key array): each row then draws
from its own key, so a row's sample does not depend on which other rows share its batch
(DIGG derives each sample's key from its image and sample number, making a resumed run
equal to an uninterrupted one).

`given` (bool, (B, seq_len) or (seq_len,)) forces more positions than the prefix: a visible
index after a masked one (DIGG's right-half or box masks) is fed from `prefix`, not drawn.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp

from kt_jax.models.latent_transformer import LatentTransformer


def top_k_mask(logits, k: int):
  """Keeps the k largest logits of the last axis (ties with the k-th kept), -inf elsewhere.
  k <= 0 or >= vocab keeps everything."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_mask(logits, p: float):
  """Nucleus: keeps the smallest set of most probable entries whose probability reaches p
  (always the most probable one), -inf elsewhere. p >= 1 keeps everything."""
  if p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable entries
  keep = before < p
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_logits(key, logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """One index per row of (B, V) logits; temperature 0 is greedy."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = top_p_mask(top_k_mask(logits / temperature, top_k), top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _drawer(key, temperature: float, top_k: int, top_p: float):
  """draw(position, (B, V) logits) -> (B,) indices from `key` (one key, or one per row)."""
  draw = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1:
    return lambda position, logits: jax.vmap(
        lambda k, row: draw(jax.random.fold_in(k, position), row))(key, logits)
  return lambda position, logits: draw(jax.random.fold_in(key, position), logits)


def _forced(new, tokens, position, given):
  """`new` where the position is free, the prefix's index where `given` forces it."""
  if given is None:
    return new
  keep = jax.lax.dynamic_index_in_dim(given, position, axis=1, keepdims=False)
  current = jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False)
  return jnp.where(keep, current, new)


def _start(module: LatentTransformer, batch: int, condition):
  if condition is None:
    return jnp.full((batch,), module.vocab_size, jnp.int32)
  return module.vocab_size + jnp.asarray(condition, jnp.int32).reshape(batch)


def _check(module: LatentTransformer, prefix) -> None:
  if prefix.ndim != 2 or prefix.shape[1] != module.seq_len:
    raise ValueError(f"prefix must be (batch, {module.seq_len}) indices; got {prefix.shape}")


@functools.partial(jax.jit, static_argnames=("module", "temperature", "top_k", "top_p",
                                             "cached"))
def sample(module: LatentTransformer, params: Any, key, prefix, num_given=0, condition=None,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           cached: bool = True, given=None):
  """(B, seq_len) int32 indices: prefix[:, :num_given] kept, the rest sampled in raster order.

  `params` is the model's variables ({'params': ...}); `prefix` (B, seq_len) int (its values
  at positions >= num_given are ignored unless `given` forces them); `num_given` may be
  traced; `condition` (B,) class ids or None; `key` one key or a (B,) array of keys, one per
  row; `given` None or a bool mask, (B, seq_len) or (seq_len,): positions >= num_given where
  it is True keep the prefix's index (fed to the model as it goes, never drawn).
  """
  _check(module, prefix)
  prefix = prefix.astype(jnp.int32)
  draw = _drawer(key, temperature, top_k, top_p)
  if given is not None:
    given = jnp.broadcast_to(jnp.asarray(given, bool), prefix.shape)
  if not cached:
    def naive(position, tokens):
      logits = module.apply(params, tokens, condition)
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
      new = _forced(draw(position, logits), tokens, position, given)
      return jax.lax.dynamic_update_index_in_dim(tokens, new, position, axis=1)
    return jax.lax.fori_loop(num_given, module.seq_len, naive, prefix)

  start = _start(module, prefix.shape[0], condition)
  # The prefix's keys/values at every position; those past num_given are overwritten by the
  # steps before anything attends to them.
  _, cache = module.apply(params, prefix, condition, method=module.prefill)

  def cached_step(position, carry):
    tokens, cache = carry
    previous = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(position - 1, 0), axis=1,
                                            keepdims=False)
    token = jnp.where(position == 0, start, previous)
    logits, cache = module.apply(params, token, position, cache, method=module.step)
    new = _forced(draw(position, logits), tokens, position, given)
    return jax.lax.dynamic_update_index_in_dim(tokens, new, position, axis=1), cache

  return jax.lax.fori_loop(num_given, module.seq_len, cached_step, (prefix, cache))[0]
