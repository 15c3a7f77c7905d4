"""A GPT-style decoder over VQGAN code indices in raster order (taming's "cond transformer").

The sequence is a start token followed by the h*w code indices; the model predicts index t
from the start token and indices < t (`__call__(indices) -> logits`, next-index
cross-entropy). The start token is one of `num_classes` condition tokens (1: unconditional),
embedded in the same table after the codebook's `vocab_size` entries.

Besides the parallel forward it has a key/value-cache path, `prefill` and `step`, so
`kt_jax.models.sampling` completes a grid in one compiled loop: each step embeds one token,
writes its keys and values at its position in the cache and attends to positions <= it.
The cache is an explicit pytree argument (not a Flax 'cache' collection), so the sampler is a
pure function the loop carries.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import registry

_INIT = nn.initializers.normal(0.02)  # GPT-2


class CausalSelfAttention(nn.Module):
  width: int
  num_heads: int
  dtype: Any = jnp.float32

  def setup(self):
    self.qkv = nn.Dense(3 * self.width, kernel_init=_INIT, dtype=self.dtype)
    self.proj = nn.Dense(self.width, kernel_init=_INIT, dtype=self.dtype)

  def _split(self, x):
    b, t, _ = x.shape
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    shape = (b, t, self.num_heads, self.width // self.num_heads)
    return q.reshape(shape), k.reshape(shape), v.reshape(shape)

  def __call__(self, x):
    """Causal attention over the whole sequence; also returns its keys and values."""
    q, k, v = self._split(x)
    t = x.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))
    out = _attend(q, k, v, mask[None, None])
    return self.proj(out.reshape(x.shape)), (k, v)

  def step(self, x, position, cache):
    """One token (B, 1, W) at `position`; cache = (k, v), each (B, T, heads, head_dim)."""
    q, k, v = self._split(x)
    k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype),
                                                  position, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype),
                                                  position, axis=1)
    mask = (jnp.arange(k_cache.shape[1]) <= position)[None, None, None, :]
    out = _attend(q, k_cache, v_cache, mask)
    return self.proj(out.reshape(x.shape)), (k_cache, v_cache)


def _attend(q, k, v, mask):
  """(B, Tq, H, d) x (B, Tk, H, d) -> (B, Tq, H, d); `mask` broadcasts to (B, H, Tq, Tk)."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
  scores = jnp.where(mask, scores, -jnp.inf)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Block(nn.Module):
  """Pre-LN transformer block (GPT-2)."""
  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.ln_1 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.attn = CausalSelfAttention(self.width, self.num_heads, self.dtype)
    self.ln_2 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.fc = nn.Dense(int(self.width * self.mlp_ratio), kernel_init=_INIT, dtype=self.dtype)
    self.fc_out = nn.Dense(self.width, kernel_init=_INIT, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def _mlp(self, x, train):
    return self.drop(self.fc_out(nn.gelu(self.fc(self.ln_2(x)))), deterministic=not train)

  def __call__(self, x, train: bool = False):
    y, kv = self.attn(self.ln_1(x))
    x = x + self.drop(y, deterministic=not train)
    return x + self._mlp(x, train), kv

  def step(self, x, position, cache):
    y, cache = self.attn.step(self.ln_1(x), position, cache)
    x = x + y
    return x + self._mlp(x, False), cache


class LatentTransformer(nn.Module):
  """Next-index prediction over `seq_len` = h*w codes of a `vocab_size` codebook."""
  vocab_size: int = 256
  seq_len: int = 64
  num_classes: int = 1
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
    self.embed = nn.Embed(self.vocab_size + self.num_classes, self.width, embedding_init=_INIT,
                          dtype=self.dtype)
    self.pos_embed = self.param("pos_embed", _INIT, (self.seq_len, self.width))
    self.blocks = [Block(self.width, self.num_heads, self.mlp_ratio, self.dropout, self.dtype,
                         name=f"block_{i}") for i in range(self.depth)]
    self.ln_f = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.head = nn.Dense(self.vocab_size, kernel_init=_INIT, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def _inputs(self, indices, condition):
    """[start token of `condition`, indices[:-1]]: position t sees indices < t."""
    b = indices.shape[0]
    start = self._start_tokens(b, condition)
    return jnp.concatenate([start[:, None], indices[:, :-1].astype(jnp.int32)], axis=1)

  def _start_tokens(self, batch, condition):
    if condition is None:
      return jnp.full((batch,), self.vocab_size, jnp.int32)
    return self.vocab_size + jnp.asarray(condition, jnp.int32).reshape(batch)

  def _forward(self, indices, condition, train):
    indices = indices.reshape(indices.shape[0], -1)
    t = indices.shape[1]
    if t > self.seq_len:
      raise ValueError(f"{t} indices, more than seq_len {self.seq_len}")
    x = self.embed(self._inputs(indices, condition)) + self.pos_embed[:t].astype(self.dtype)
    x = self.drop(x, deterministic=not train)
    caches = []
    for block in self.blocks:
      x, kv = block(x, train)
      caches.append(kv)
    return self.head(self.ln_f(x)).astype(jnp.float32), caches

  def __call__(self, indices, condition=None, train: bool = False):
    """(B, N) or (B, h, w) indices -> (B, N, vocab_size) logits of each index given the
    earlier ones; `condition` (B,) picks the start token (class), None: token 0."""
    return self._forward(indices, condition, train)[0]

  def init_cache(self, batch: int) -> list:
    head_dim = self.width // self.num_heads
    zeros = jnp.zeros((batch, self.seq_len, self.num_heads, head_dim), self.dtype)
    return [(zeros, zeros) for _ in range(self.depth)]

  def prefill(self, indices, condition=None):
    """The parallel forward of `indices` (B, seq_len), returning (logits, filled cache)."""
    return self._forward(indices, condition, False)

  def step(self, token, position, cache):
    """Logits (B, vocab) of the index at `position`, fed the token at `position` (the start
    token at 0, else index position-1), and the cache with that token's keys/values added."""
    x = self.embed(token[:, None]) + jax.lax.dynamic_slice_in_dim(
        self.pos_embed, position, 1).astype(self.dtype)[None]
    new_cache = []
    for block, kv in zip(self.blocks, cache):
      x, kv = block.step(x, position, kv)
      new_cache.append(kv)
    return self.head(self.ln_f(x))[:, 0].astype(jnp.float32), new_cache


def register_variant(name: str, **fields):
  registry.register(name, functools.partial(LatentTransformer, **fields))


# The tiny one models vqgan_tiny's 8x8 grid of 256 codes; the 16x16 one a f16 VQGAN at 256 px.
register_variant("latent_transformer_tiny", vocab_size=256, seq_len=64, width=128, depth=4,
                 num_heads=4)
register_variant("latent_transformer_16x16", vocab_size=16384, seq_len=256, width=512,
                 depth=8, num_heads=8)
