"""faiss indexes over unit vectors, chosen by config: inner product = cosine similarity.

  flat   exact search (IndexFlatIP): small galleries, and the reference for recall
  ivfpq  inverted lists + product quantisation (optionally OPQ-rotated): large galleries,
         about pq_m bytes per vector
  hnsw   a graph over the full vectors: fast and accurate, but 4 * dim + 8 * M bytes a vector

An index that needs training is trained on a random sample of the gallery, then filled shard
by shard, so the gallery never has to fit in memory at once.
"""
import math
import time
from typing import Iterable

import faiss
import numpy as np

KINDS = ("flat", "ivfpq", "hnsw")


def auto_nlist(count: int) -> int:
  """About 4 sqrt(N) inverted lists, but at least 39 training vectors per list (faiss's
  minimum for k-means), and at least one list."""
  return max(1, min(int(4 * math.sqrt(count)), count // 39))


def make(kind: str, dim: int, *, count: int = 0, nlist: int = 0, pq_m: int = 16,
         pq_bits: int = 8, opq: bool = False, hnsw_m: int = 32) -> faiss.Index:
  """An empty index for `count` vectors of dimension `dim` (count sizes nlist when 0)."""
  if kind == "flat":
    return faiss.IndexFlatIP(dim)
  if kind == "hnsw":
    return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
  if kind == "ivfpq":
    if dim % pq_m:
      raise ValueError(f"pq_m={pq_m} must divide the vector dimension {dim}.")
    nlist = nlist or auto_nlist(count)
    spec = f"{f'OPQ{pq_m},' if opq else ''}IVF{nlist},PQ{pq_m}x{pq_bits}"
    made = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    # The factory turns on polysemous training (codes ordered for Hamming filtering, which
    # search does not use here); it costs minutes of annealing for nothing.
    faiss.downcast_index(faiss.extract_index_ivf(made)).do_polysemous_training = False
    return made
  raise ValueError(f"Unknown index kind {kind!r}; kinds: {', '.join(KINDS)}.")


def set_search(index: faiss.Index, nprobe: int = 16, ef_search: int = 64) -> None:
  """Search-time accuracy knobs: lists probed (IVF) and the graph beam (HNSW)."""
  ivf = faiss.try_extract_index_ivf(index)
  if ivf is not None:
    ivf.nprobe = min(nprobe, ivf.nlist)
  if isinstance(index, faiss.IndexHNSW):
    index.hnsw.efSearch = ef_search


def build(index: faiss.Index, batches: Iterable[np.ndarray], train_sample: np.ndarray | None):
  """Trains (if the index needs it) on `train_sample`, then adds `batches` in order; returns
  (index, seconds training, seconds adding)."""
  start = time.perf_counter()
  if not index.is_trained:
    index.train(np.ascontiguousarray(train_sample, np.float32))
  trained = time.perf_counter()
  for batch in batches:
    index.add(np.ascontiguousarray(batch, np.float32))
  return index, trained - start, time.perf_counter() - trained


def sample_rows(counts: list[int], size: int, seed: int = 0) -> list[np.ndarray]:
  """Per shard, the sorted rows of a uniform sample of `size` over all shards' rows."""
  total = sum(counts)
  chosen = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
  bounds = np.cumsum([0] + list(counts))
  return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores, ids), each (Q, k), best first; id -1 where fewer than k were found."""
  return index.search(np.ascontiguousarray(queries, np.float32), k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
  """Mean share of each query's exact top-k found in the approximate top-k."""
  hits = [len(set(a[:k]) & set(e[:k]) - {-1}) for a, e in zip(approx_ids, exact_ids)]
  return float(np.mean(hits) / k)


def save(index: faiss.Index, path: str) -> None:
  faiss.write_index(index, path)


def load(path: str) -> faiss.Index:
  return faiss.read_index(path)


def memory_bytes(index: faiss.Index) -> int:
  """The serialised size: what the index takes on disk and, about, in memory."""
  return int(faiss.serialize_index(index).size)
