"""faiss indexes by config: exact against NumPy, approximate recall against exact, save/load."""
import numpy as np
import pytest

from kt_jax.retrieval import index

# A stated bound: IVF-PQ (32 6-bit codes a vector, 8 of 32 lists probed) finds at least this share
# of the exact top-10 on clustered unit vectors like embeddings.
IVFPQ_RECALL_AT_10 = 0.6
HNSW_RECALL_AT_10 = 0.9


def clustered_unit_vectors(n, dim=64, clusters=50, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((clusters, dim))
  x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.standard_normal((n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  gallery = clustered_unit_vectors(3000)
  queries = clustered_unit_vectors(200, seed=1)
  exact_ids = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]
  return gallery, queries, exact_ids


def test_flat_is_exact(data):
  gallery, queries, exact_ids = data
  flat, _, _ = index.build(index.make("flat", 64), np.array_split(gallery, 3), None)
  scores, ids = index.search(flat, queries, 10)
  assert index.recall_at_k(ids, exact_ids, 10) == 1.0
  np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, ids, 1),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opq", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_ivfpq_recall_and_reload(data, tmp_path, opq):
  gallery, queries, exact_ids = data
  rows = index.sample_rows([1000, 1000, 1000], 2500, seed=0)
  assert sum(len(r) for r in rows) == 2500
  sample = np.concatenate([gallery[i * 1000:(i + 1) * 1000][r] for i, r in enumerate(rows)])
  ivf = index.make("ivfpq", 64, nlist=32, pq_m=32, pq_bits=6, opq=opq)
  ivf, _, _ = index.build(ivf, np.array_split(gallery, 3), sample)  # filled shard by shard
  index.set_search(ivf, nprobe=8)
  _, ids = index.search(ivf, queries, 10)
  assert index.recall_at_k(ids, exact_ids, 10) > IVFPQ_RECALL_AT_10
  index.save(ivf, str(tmp_path / "ivf.faiss"))
  again = index.load(str(tmp_path / "ivf.faiss"))
  index.set_search(again, nprobe=8)
  np.testing.assert_array_equal(index.search(again, queries, 10)[1], ids)
  assert index.memory_bytes(ivf) < gallery.nbytes / 4  # 24 bytes of codes a vector, not 256


def test_hnsw_recall(data):
  gallery, queries, exact_ids = data
  hnsw, _, _ = index.build(index.make("hnsw", 64, hnsw_m=16), [gallery], None)
  index.set_search(hnsw, ef_search=64)
  assert index.recall_at_k(index.search(hnsw, queries, 10)[1], exact_ids, 10) > HNSW_RECALL_AT_10


def test_bad_pq_m_is_one_clear_error():
  with pytest.raises(ValueError, match="must divide"):
    index.make("ivfpq", 60, pq_m=16)
