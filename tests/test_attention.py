"""The tiled CPU attention against jax.nn.dot_product_attention, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax.models import attention


def _qkv(shape, seed=0):
  r = np.random.RandomState(seed)
  return tuple(jnp.asarray(r.randn(*shape), jnp.float32) for _ in range(3))


@pytest.mark.parametrize("shape,tile_bytes", [
    ((4, 26, 3, 16), attention.TILE_BYTES),  # fits in one tile: no scan
    ((4, 26, 3, 16), 26 * 26 * 4),           # one (sample, head) per tile: 12 scan steps
    ((6, 17, 4, 8), 2 * 17 * 17 * 4),        # two heads per tile
    ((6, 17, 4, 8), 8 * 17 * 17 * 4),        # all heads and two samples per tile
])
def test_tiled_matches_reference(monkeypatch, shape, tile_bytes):
  monkeypatch.setattr(attention, "TILE_BYTES", tile_bytes)
  q, k, v = _qkv(shape)
  b, t, h, _ = shape
  groups, cb, ch = attention._tiles(b, h, t)
  assert b % (groups * cb) == 0 and h % ch == 0
  assert cb * ch * t * t * 4 <= max(tile_bytes, t * t * 4)
  ref = jax.nn.dot_product_attention(q, k, v)
  out = jax.jit(attention.tiled_attention)(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-6)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  got = jax.grad(loss(attention.tiled_attention), (0, 1, 2))(q, k, v)
  want = jax.grad(loss(jax.nn.dot_product_attention), (0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_auto_and_unknown_implementation():
  q, k, v = _qkv((2, 5, 2, 8))
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, "auto"),
                             attention.dot_product_attention(q, k, v, "xla"), atol=2e-6)
  with pytest.raises(ValueError, match="flash"):
    attention.dot_product_attention(q, k, v, "flash")

