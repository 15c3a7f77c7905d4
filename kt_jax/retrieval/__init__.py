"""Retrieval-augmented transfer sets: embed a gallery at crop level, index it with faiss,
retrieve a query-balanced transfer set for few-shot labelled images.

  crops.py     the crop boxes (whole image, grid, multi-scale) and cutting them
  gallery.py   a gallery as units (tar shards, or runs of a folder/ArrayRecord source)
  store.py     embedding shards on disk: vectors (.npy) + table (.json) per unit
  embedder.py  the jitted, L2-normalising crop embedder over this process's devices
  index.py     faiss indexes by config (exact, IVF-PQ with optional OPQ, HNSW), recall@k
  balanced.py  query-balanced selection (pure functions) and precision against labels
  manifest.py  the retrieved transfer set on disk and its grain source (crops at load time)
"""
