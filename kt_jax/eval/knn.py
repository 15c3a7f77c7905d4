"""DINO's weighted k-NN classifier on frozen features, in jax.numpy.

As in DINO's `eval_knn.py` (after Wu et al. 2018): features are L2-normalised, each test row
takes its top-k cosine neighbours in the bank, and each neighbour votes for its class with
weight exp(sim / T); k=20 and T=0.07 are DINO's defaults. Test rows go through `lax.map` in
fixed-size chunks, so only a (chunk, bank) similarity matrix exists at a time and one compile
serves any number of rows of the same padded shape. k is clipped to the bank size. Ties go to
the lower index: equal similarities to the lower bank row, equal votes to the lower class.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalise(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Rows to unit length; all-zero rows stay zero instead of becoming NaN."""
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _in_chunks(fn: Callable, rows: jnp.ndarray, chunk_size: int):
  """`fn` over `rows` in chunks of `chunk_size` (the last one zero-padded), results unpadded."""
  n = rows.shape[0]
  chunk = max(1, min(chunk_size, n))
  padded = jnp.pad(rows, ((0, -n % chunk), (0, 0)))
  out = jax.lax.map(fn, padded.reshape(-1, chunk, rows.shape[-1]))
  return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


def _top_k(queries: jnp.ndarray, bank: jnp.ndarray, k: int):
  # HIGHEST: accelerators would otherwise round the similarities to bf16/tf32 and reorder
  # close neighbours.
  sims = jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(sims, min(k, bank.shape[0]))


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def nearest_neighbours(query: jnp.ndarray, bank: jnp.ndarray, k: int,
                       chunk_size: int = 256) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(indices, cosine similarities), each (num_query, min(k, num_bank)), most similar first."""
  bank = l2_normalise(bank)
  sims, indices = _in_chunks(lambda q: _top_k(q, bank, k), l2_normalise(query), chunk_size)
  return indices, sims


def _vote(sims: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
          temperature: float) -> jnp.ndarray:
  weights = jnp.exp(sims / temperature)
  return jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(labels, num_classes))


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def knn_classify(train_feats: jnp.ndarray, train_labels: jnp.ndarray, test_feats: jnp.ndarray,
                 num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 256) -> jnp.ndarray:
  """Predicted class per test row, int32 (num_test,)."""
  bank, train_labels = l2_normalise(train_feats), jnp.asarray(train_labels)

  def predict(queries):
    sims, indices = _top_k(queries, bank, k)
    return jnp.argmax(_vote(sims, train_labels[indices], num_classes, temperature), axis=-1)

  return _in_chunks(predict, l2_normalise(test_feats), chunk_size).astype(jnp.int32)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk_size: int = 256) -> float:
  """Top-1 accuracy of `knn_classify`, as a Python float in [0, 1]."""
  predictions = knn_classify(train_feats, train_labels, test_feats, num_classes, k, temperature,
                             chunk_size)
  return float(np.mean(np.asarray(predictions) == np.asarray(test_labels)))
