"""The `index` stage: the embed stage's shards -> a faiss index (`index.faiss`), trained on
a sample and filled shard by shard; for an approximate kind, recall@k against exact search
on the same queries (gallery vectors drawn at random)."""
import json
import os
import time

import numpy as np
from absl import logging

from kt_jax import paths
from kt_jax.errors import UserError
from kt_jax.stages import checks

INDEX_FILE, INFO_FILE = "index.faiss", "index.json"


def validate(config) -> None:
  from kt_jax.retrieval import index  # pylint: disable=g-import-not-at-top
  checks.check_choice(config.kind, "kind", index.KINDS)
  checks.check_positive(config, "pq_m", "pq_bits", "hnsw_m", "train_size", "nprobe",
                        "ef_search", "recall_k")
  checks.check_non_negative(config, "nlist", "recall_queries")
  if not config.embeddings:
    raise UserError("Set --config.embeddings=<workdir of the embed stage>.")
  if not checks.is_deferred(config.embeddings) and not paths.exists(config.embeddings):
    raise UserError(f"config.embeddings={config.embeddings} does not exist.")


def embeddings_dir(config) -> str:
  from kt_jax.stages import embed  # pylint: disable=g-import-not-at-top
  return paths.join(config.embeddings, embed.EMBEDDINGS)


def run(config, workdir: str) -> dict:
  from kt_jax.retrieval import index, store  # pylint: disable=g-import-not-at-top
  directory = embeddings_dir(config)
  names = store.done(directory)
  if not names:
    raise UserError(f"No embedding shards in {directory}: run the embed stage first.")
  shards = [store.read_vectors(directory, name) for name in names]  # memory-mapped
  counts = [len(s) for s in shards]
  total, dim = sum(counts), shards[0].shape[1]
  faiss_index = index.make(config.kind, dim, count=total, nlist=config.nlist, pq_m=config.pq_m,
                           pq_bits=config.pq_bits, opq=config.opq, hnsw_m=config.hnsw_m)
  rows = index.sample_rows(counts, config.train_size, config.seed)
  sample = None if faiss_index.is_trained else np.concatenate(
      [np.asarray(s[r]) for s, r in zip(shards, rows)])
  faiss_index, train_s, add_s = index.build(faiss_index, shards, sample)
  index.set_search(faiss_index, config.nprobe, config.ef_search)
  index.save(faiss_index, os.path.join(workdir, INDEX_FILE))
  summary = {"kind": config.kind, "vectors": total, "dim": dim, "shards": len(names),
             "train_vectors": 0 if sample is None else len(sample),
             "train_seconds": round(train_s, 2), "add_seconds": round(add_s, 2),
             "bytes": index.memory_bytes(faiss_index), "nprobe": config.nprobe,
             "ef_search": config.ef_search}
  if config.kind != "flat" and config.recall_queries:
    queries = np.concatenate([np.asarray(s[r]) for s, r in zip(
        shards, index.sample_rows(counts, config.recall_queries, config.seed + 1))])
    exact = index.build(index.make("flat", dim), shards, None)[0]
    start = time.perf_counter()
    _, approx_ids = index.search(faiss_index, queries, config.recall_k)
    summary["search_ms_per_query"] = round(1000 * (time.perf_counter() - start) / len(queries),
                                           4)
    _, exact_ids = index.search(exact, queries, config.recall_k)
    summary[f"recall_at_{config.recall_k}"] = index.recall_at_k(approx_ids, exact_ids,
                                                               config.recall_k)
  paths.write_text(os.path.join(workdir, INFO_FILE), json.dumps(
      {"embeddings": directory, **summary, "shard_names": names}, indent=2))
  logging.info("index: %s", summary)
  print(f"\nindex: {config.kind} over {total} vectors of {dim} dims, {summary['bytes']} bytes; "
        + (f"recall@{config.recall_k} against exact "
           f"{summary[f'recall_at_{config.recall_k}']:.3f}" if f"recall_at_{config.recall_k}"
           in summary else "exact search"))
  return summary
