"""faiss on synthetic L2-normalised vectors: build time, search time, memory, recall@10 vs
exact, and a projection to CC3M scale (3M images x 10 crops).

  nice -n 10 python benchmarks/retrieval.py --n 100000 --dim 384 --kinds flat,ivfpq
  nice -n 10 python benchmarks/retrieval.py --n 1000000 --dim 384 --kinds ivfpq

Vectors are drawn around 1,000 random centres (like embeddings, which cluster), so IVF's
lists and PQ's codebooks behave as on real data rather than on uniform noise. The
projection scales the measured per-vector rates linearly (IVF-PQ add and search cost grow
linearly in N at fixed nlist/nprobe ratios); memory is exact arithmetic on code sizes.
"""
import argparse
import json
import resource
import time

import numpy as np

from kt_jax.retrieval import index

CC3M_VECTORS = 3_000_000 * 10


def clustered(n: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
  rng = np.random.default_rng(seed)
  means = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, 100_000):  # in chunks: bounded temporary memory
    stop = min(n, start + 100_000)
    x = means[rng.integers(centres, size=stop - start)] + 0.7 * rng.standard_normal(
        (stop - start, dim)).astype(np.float32)
    out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind, gallery, queries, exact_ids, args) -> dict:
  dim = gallery.shape[1]
  made = index.make(kind, dim, count=len(gallery), nlist=args.nlist, pq_m=args.pq_m,
                    pq_bits=8, opq=args.opq, hnsw_m=32)
  sample = gallery[np.random.default_rng(0).choice(len(gallery),
                                                   min(args.train, len(gallery)), False)]
  start = time.perf_counter()
  built, train_s, add_s = index.build(made, np.array_split(gallery, 10), sample)
  index.set_search(built, nprobe=args.nprobe, ef_search=128)
  begin = time.perf_counter()
  _, ids = index.search(built, queries, 10)
  search_s = time.perf_counter() - begin
  return {"kind": kind, "n": len(gallery), "dim": dim, "train_s": round(train_s, 2),
          "add_s": round(add_s, 2), "build_s": round(time.perf_counter() - start - search_s, 2),
          "search_ms_per_query": round(1000 * search_s / len(queries), 3),
          "bytes": index.memory_bytes(built),
          "recall_at_10": None if exact_ids is None else index.recall_at_k(ids, exact_ids, 10),
          "peak_rss_mb": round(rss_mb())}, ids


def projection(rows: list[dict], dim: int, pq_m: int) -> dict:
  """CC3M: 3M images x 10 crops. Memory from code sizes; times scaled from measured rates."""
  out = {"vectors": CC3M_VECTORS, "dim": dim,
         "flat_bytes": CC3M_VECTORS * dim * 4,
         "ivfpq_bytes": CC3M_VECTORS * (pq_m + 8),  # codes + 64-bit ids in the lists
         "embeddings_float16_bytes": CC3M_VECTORS * dim * 2}
  for row in rows:
    if row["kind"] == "ivfpq":
      out["ivfpq_add_hours"] = round(row["add_s"] / row["n"] * CC3M_VECTORS / 3600, 2)
      out["ivfpq_train_s_at_same_sample"] = row["train_s"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--kinds", default="flat,ivfpq")
  parser.add_argument("--nlist", type=int, default=0)
  parser.add_argument("--nprobe", type=int, default=16)
  parser.add_argument("--pq_m", type=int, default=48)
  parser.add_argument("--opq", action="store_true")
  parser.add_argument("--train", type=int, default=50_000)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  start = time.perf_counter()
  gallery = clustered(args.n, args.dim, seed=0)
  queries = clustered(args.queries, args.dim, seed=1)
  print(f"data: {args.n} x {args.dim} in {time.perf_counter() - start:.1f} s")
  exact_ids, rows = None, []
  kinds = args.kinds.split(",")
  if "flat" not in kinds:
    kinds = ["flat"] + kinds  # the reference for recall
  for kind in kinds:
    row, ids = measure(kind, gallery, queries, exact_ids, args)
    if kind == "flat":
      exact_ids = ids
      row["recall_at_10"] = 1.0
    rows.append(row)
    print(json.dumps(row))
  result = {"rows": rows, "cc3m_projection": projection(rows, args.dim, args.pq_m)}
  print(json.dumps(result["cc3m_projection"], indent=2))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
