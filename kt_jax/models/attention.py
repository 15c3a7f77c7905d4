"""Multi-head attention kernels: one call, the implementation picked per backend.

Why not always `jax.nn.dot_product_attention`: on XLA:CPU it materialises the full
(B, heads, T, T) score tensor and runs the batched matmuls in the (B, T, heads, d) layout,
so at DINOv2's 257 tokens attention costs as much as the whole MLP and the backward pass
streams hundreds of MB through memory (measured on a 2-core EPYC: 258 ms for the attention of
one ViT-B block at batch 16 against 38 ms for PyTorch's fused CPU kernel). `tiled` computes attention a few
(sample, head) pairs at a time inside a `lax.scan`, so each score tile stays in the core's
cache, and rematerialises the tile in the backward pass instead of storing it: the forward
drops to ~50-70 ms and forward+backward from 534 ms to ~220 ms at those shapes. On GPU and
TPU the fused kernels are better, so `auto` keeps `jax.nn.dot_product_attention` there.
"""
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "tiled", "xla", "cudnn")
# Bytes of fp32 scores per tile and device: half of the 1 MiB per-core L2 the CPU machines
# here have, leaving room for q, k, v and the output of the tile.
TILE_BYTES = 512 * 1024


def dot_product_attention(q, k, v, implementation: str = "auto"):
  """Softmax attention of (B, T, heads, head_dim) q, k, v, no mask; returns q's shape."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}; one of {IMPLEMENTATIONS}")
  if implementation == "auto":
    implementation = "tiled" if jax.default_backend() == "cpu" else "xla"
  if implementation == "tiled":
    return tiled_attention(q, k, v)
  impl = None if implementation == "xla" else implementation
  return jax.nn.dot_product_attention(q, k, v, implementation=impl)


def _attend(q, k, v):
  """Plain attention over leading batch dims: (..., T, d) -> (..., T, d)."""
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  out = jnp.einsum("...qk,...kd->...qd", p.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / jnp.sum(p, axis=-1, keepdims=True)).astype(q.dtype)


def _largest_divisor(n: int, limit: int) -> int:
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(limit, 1))


def _tiles(batch: int, heads: int, tokens: int) -> tuple[int, int, int]:
  """(groups, samples, heads) per tile; `groups` keeps the batch's device split outermost."""
  groups = jax.device_count() if batch % jax.device_count() == 0 else 1
  per_head = tokens * tokens * 4
  tile_heads = _largest_divisor(heads, TILE_BYTES // per_head)
  tile_samples = _largest_divisor(batch // groups, TILE_BYTES // (per_head * tile_heads))
  return groups, tile_samples, tile_heads


def tiled_attention(q, k, v):
  """`_attend` a tile of (sample, head) pairs at a time, each tile recomputed for backward.

  The batch is split as (groups, rest) with `groups` = the device count, and the scan runs
  over `rest`, so a batch sharded over devices stays sharded: every device works on its own
  samples in every step of the scan, with no gather.
  """
  b, t, h, d = q.shape
  groups, cb, ch = _tiles(b, h, t)
  steps = (b // groups // cb) * (h // ch)
  if steps == 1:
    out = _attend(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)))
    return out.transpose(0, 2, 1, 3)

  def to_tiles(x):  # (B, T, H, d) -> (steps, groups, cb, ch, T, d)
    x = x.reshape(groups, b // groups // cb, cb, t, h // ch, ch, d)
    x = x.transpose(1, 4, 0, 2, 5, 3, 6)
    return x.reshape(steps, groups, cb, ch, t, d)

  def step(carry, qkv):
    return carry, jax.checkpoint(_attend)(*qkv)

  _, out = jax.lax.scan(step, None, tuple(to_tiles(x) for x in (q, k, v)))
  out = out.reshape(b // groups // cb, h // ch, groups, cb, ch, t, d)
  return out.transpose(2, 0, 3, 5, 1, 4, 6).reshape(b, t, h, d)
