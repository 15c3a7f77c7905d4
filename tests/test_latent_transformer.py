"""The latent transformer: causality, the cached sampler against naive re-evaluation, and the
top-k/top-p masks against NumPy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax import models
from kt_jax.models import latent_transformer, sampling

VOCAB, SEQ = 24, 12


def _model(**kwargs):
  fields = dict(vocab_size=VOCAB, seq_len=SEQ, width=32, depth=2, num_heads=4, num_classes=3)
  fields.update(kwargs)
  module = latent_transformer.LatentTransformer(**fields)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
  # Larger logits than the 0.02 init gives, so sampling is far from uniform.
  params = jax.tree.map(lambda p: p * 8 if p.ndim == 2 else p, params)
  return module, params


def _indices(seed=0, batch=3):
  return jax.random.randint(jax.random.key(seed), (batch, SEQ), 0, VOCAB)


def test_logits_are_causal_and_shaped():
  module, params = _model()
  indices = _indices()
  apply = jax.jit(module.apply)
  logits = apply(params, indices)
  assert logits.shape == (3, SEQ, VOCAB)
  changed = indices.at[:, 7].set((indices[:, 7] + 1) % VOCAB)
  logits2 = apply(params, changed)
  # index 7 is seen only by positions 8 onwards
  np.testing.assert_array_equal(logits[:, :8], logits2[:, :8])
  assert float(jnp.abs(logits[:, 8:] - logits2[:, 8:]).max()) > 0
  # (B, h, w) grids flatten in raster order
  np.testing.assert_array_equal(apply(params, indices.reshape(3, 3, 4)), logits)
  # the condition changes every position's logits
  cond = apply(params, indices, jnp.array([2, 2, 2]))
  assert float(jnp.abs(cond - logits).min(axis=-1).max()) > 0


def test_step_by_step_cache_equals_the_parallel_forward():
  module, params = _model()
  indices = _indices(1, 2)
  full = jax.jit(module.apply)(params, indices, jnp.array([0, 1]))
  step = jax.jit(functools.partial(module.apply, method=module.step))
  cache = module.init_cache(2)
  start = VOCAB + jnp.array([0, 1])
  for t in range(SEQ):
    token = start if t == 0 else indices[:, t - 1]
    logits, cache = step(params, token, t, cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=5),
                                      dict(temperature=1.3, top_p=0.8)])
@pytest.mark.parametrize("num_given", [0, 5])
def test_cached_sampler_equals_naive_reevaluation(settings, num_given):
  module, params = _model()
  prefix = _indices(2, 4)
  condition = jnp.array([0, 1, 2, 1])
  key = jax.random.key(3)
  cached = sampling.sample(module, params, key, prefix, num_given, condition, **settings)
  naive = sampling.sample(module, params, key, prefix, num_given, condition, cached=False,
                          **settings)
  np.testing.assert_array_equal(cached, naive)
  np.testing.assert_array_equal(cached[:, :num_given], prefix[:, :num_given])
  assert cached.dtype == jnp.int32
  other = sampling.sample(module, params, jax.random.key(4), prefix, num_given, condition,
                          **settings)
  assert (np.asarray(other) != np.asarray(cached)).any()  # the key matters


def test_sampler_draws_from_the_model_distribution():
  """Greedy picks the argmax of the naive logits; with temperature 1 the first position's
  empirical frequencies follow the model's softmax."""
  module, params = _model()
  prefix = jnp.zeros((512, SEQ), jnp.int32)
  greedy = sampling.sample(module, params, jax.random.key(0), prefix[:2], temperature=0.0)
  apply = jax.jit(module.apply)
  logits = apply(params, greedy)
  np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), axis=-1))
  first = np.asarray(sampling.sample(module, params, jax.random.key(1), prefix))[:, 0]
  probs = np.asarray(jax.nn.softmax(apply(params, prefix[:1])[0, 0]))
  freq = np.bincount(first, minlength=VOCAB) / len(first)
  assert np.abs(freq - probs).max() < 0.08


def _numpy_top_k(logits, k):
  out = logits.copy()
  for row in out:
    kth = np.sort(row)[-k]
    row[row < kth] = -np.inf
  return out


def _numpy_top_p(logits, p):
  out = np.full_like(logits, -np.inf)
  for row, dst in zip(logits, out):
    order = np.argsort(-row)
    probs = np.exp(row[order] - row.max())
    probs /= probs.sum()
    mass = 0.0
    for i, prob in zip(order, probs):
      dst[i] = row[i]
      mass += prob
      if mass >= p:
        break
  return out


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_mask_matches_numpy(k):
  logits = np.random.default_rng(k).normal(size=(5, 17)).astype(np.float32) * 3
  np.testing.assert_array_equal(sampling.top_k_mask(jnp.asarray(logits), k),
                                _numpy_top_k(logits, k))
  np.testing.assert_array_equal(sampling.top_k_mask(jnp.asarray(logits), 0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_mask_matches_numpy(p):
  logits = np.random.default_rng(int(p * 1000)).normal(size=(6, 19)).astype(np.float32) * 2
  np.testing.assert_array_equal(sampling.top_p_mask(jnp.asarray(logits), p),
                                _numpy_top_p(logits, p))


def test_registered_variant_and_bad_prefix():
  module = models.create("latent_transformer_tiny")
  assert module.vocab_size == models.create("vqgan_tiny").codebook_size
  with pytest.raises(ValueError, match="prefix must be"):
    sampling.sample(module, {}, jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
