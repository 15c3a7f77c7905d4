"""DINO's weighted k-NN classifier on frozen features, in JAX, at ImageNet scale.

As in DINO's `eval_knn.py` (after Wu et al. 2018): features are L2-normalised, each test row
takes its top-k cosine neighbours in the bank, and each neighbour votes for its class with
weight exp(sim / T); k=20 and T=0.07 are DINO's defaults. k is clipped to the bank size.

Scale: the bank (training features) is split by rows over every device of the mesh (and so
over processes). Each device scans its rows in chunks of `bank_chunk` and keeps a running
top-k per query (top-k of each chunk merged with the carry), so only a
(query_chunk, bank_chunk) similarity block exists at a time; the devices' top-k lists are
then all-gathered and merged. Test rows go through `lax.map` in chunks of `chunk_size`. For
1.28M x 384 training features this needs the bank once in device memory (~2 GB float32,
split over devices) plus a few hundred MB of blocks. Ties go to the lower index: equal
similarities to the lower bank row (the merge keeps earlier rows first and `lax.top_k` is
stable), equal votes to the lower class.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kt_jax import sharding


def l2_normalise(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Rows to unit length; all-zero rows stay zero instead of becoming NaN."""
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _merge(vals_a, idx_a, vals_b, idx_b, k: int):
  """Top-k of two candidate lists; on equal values the first list (lower rows) wins."""
  vals, idx = jnp.concatenate([vals_a, vals_b], -1), jnp.concatenate([idx_a, idx_b], -1)
  top, pos = jax.lax.top_k(vals, k)
  return top, jnp.take_along_axis(idx, pos, axis=-1)


def _local_top_k(queries, bank, num_valid, offset, k: int, bank_chunk: int):
  """Running top-k of `queries` (normalised) against `bank` rows [0, num_valid), in chunks.

  Returns (sims, global row indices = offset + local row), each (Q, k); rows past num_valid
  (padding) never win (similarity -inf, index -1)."""
  q = queries.shape[0]
  chunks = bank.reshape(-1, bank_chunk, bank.shape[-1])
  k_chunk = min(k, bank_chunk)

  def body(carry, inputs):
    i, chunk = inputs
    # HIGHEST: accelerators would otherwise round the similarities to bf16/tf32 and reorder
    # close neighbours.
    sims = jnp.matmul(queries, l2_normalise(chunk).T, precision=jax.lax.Precision.HIGHEST)
    rows = i * bank_chunk + jnp.arange(bank_chunk)
    sims = jnp.where(rows < num_valid, sims, -jnp.inf)
    vals, idx = jax.lax.top_k(sims, k_chunk)
    idx = jnp.where(jnp.isfinite(vals), idx + i * bank_chunk + offset, -1)
    return _merge(*carry, vals, idx, k), None

  init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
  (vals, idx), _ = jax.lax.scan(body, init, (jnp.arange(chunks.shape[0]), chunks))
  return vals, idx


def _rows_spec(mesh):
  return P(tuple(mesh.axis_names))


@functools.lru_cache(maxsize=32)
def _top_k_fn(mesh, k: int, chunk_size: int, bank_chunk: int, num_valid: int, local_rows: int):
  axes = tuple(mesh.axis_names)

  def per_device(queries, bank):
    offset = jax.lax.axis_index(axes) * local_rows
    local_valid = jnp.clip(num_valid - offset, 0, local_rows)

    def one_chunk(q):
      vals, idx = _local_top_k(q, bank, local_valid, offset, k, bank_chunk)
      all_vals = jax.lax.all_gather(vals, axes, axis=1, tiled=True)  # (Q, devices * k)
      all_idx = jax.lax.all_gather(idx, axes, axis=1, tiled=True)
      top, pos = jax.lax.top_k(all_vals, k)  # device order = row order: ties keep lower rows
      return top, jnp.take_along_axis(all_idx, pos, axis=-1)

    n = queries.shape[0]
    chunk = max(1, min(chunk_size, n))
    padded = jnp.pad(l2_normalise(queries), ((0, -n % chunk), (0, 0)))
    vals, idx = jax.lax.map(one_chunk, padded.reshape(-1, chunk, queries.shape[-1]))
    return vals.reshape(-1, k)[:n], idx.reshape(-1, k)[:n]

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), _rows_spec(mesh)),
                     out_specs=(P(), P()), check_vma=False)
  return jax.jit(fn, out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P())))


def place_bank(bank: np.ndarray, mesh, bank_chunk: int):
  """Host features (every process holds them whole) -> rows split over all devices, padded
  to whole chunks. Returns (array, rows per device)."""
  n, d = bank.shape
  devices = mesh.size
  per_device = max(1, -(-n // devices))
  bank_chunk = min(bank_chunk, per_device)
  local_rows = -(-per_device // bank_chunk) * bank_chunk
  total = local_rows * devices
  spec = NamedSharding(mesh, _rows_spec(mesh))

  def shard(index):
    rows = index[0]
    start, stop = rows.start or 0, rows.stop if rows.stop is not None else total
    out = np.zeros((stop - start, d), np.float32)
    have = bank[start:min(stop, n)]
    out[:len(have)] = have
    return out
  return jax.make_array_from_callback((total, d), spec, shard), local_rows, bank_chunk


def nearest_neighbours(query, bank, k: int, chunk_size: int = 256, bank_chunk: int = 65536,
                       mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """(indices, cosine similarities), each (num_query, min(k, num_bank)), most similar first."""
  mesh = mesh or sharding.make_mesh()
  bank = np.asarray(bank, np.float32)
  k = min(k, len(bank))
  placed, local_rows, bank_chunk = place_bank(bank, mesh, bank_chunk)
  fn = _top_k_fn(mesh, k, chunk_size, bank_chunk, len(bank), local_rows)
  sims, indices = fn(jax.device_put(np.asarray(query, np.float32), NamedSharding(mesh, P())),
                     placed)
  return sharding.to_host(indices), sharding.to_host(sims)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _vote(sims: jnp.ndarray, neighbour_labels: jnp.ndarray, num_classes: int,
          temperature) -> jnp.ndarray:
  weights = jnp.exp(sims / temperature)
  votes = jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(neighbour_labels, num_classes))
  return jnp.argmax(votes, axis=-1).astype(jnp.int32)


def knn_classify(train_feats, train_labels, test_feats, num_classes: int, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 256, bank_chunk: int = 65536,
                 mesh=None) -> np.ndarray:
  """Predicted class per test row, int32 (num_test,)."""
  indices, sims = nearest_neighbours(test_feats, train_feats, k, chunk_size, bank_chunk, mesh)
  neighbour_labels = np.asarray(train_labels)[indices]
  predictions = []
  step = max(1, 2**22 // max(1, indices.shape[1] * num_classes))  # bounded one-hot blocks
  for start in range(0, len(indices), step):
    predictions.append(np.asarray(_vote(sims[start:start + step],
                                        neighbour_labels[start:start + step], num_classes,
                                        temperature)))
  return np.concatenate(predictions) if predictions else np.zeros((0,), np.int32)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk_size: int = 256,
                 bank_chunk: int = 65536, mesh=None) -> float:
  """Top-1 accuracy of `knn_classify`, as a Python float in [0, 1]."""
  predictions = knn_classify(train_feats, train_labels, test_feats, num_classes, k,
                             temperature, chunk_size, bank_chunk, mesh)
  return float(np.mean(predictions == np.asarray(test_labels)))
