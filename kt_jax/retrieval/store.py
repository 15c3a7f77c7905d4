"""Embedding shards on disk: one per gallery unit, `NAME.npy` (float32 (crops, dim),
L2-normalised) and `NAME.json` (the table: per image its source, key and byte range; per crop
its image and box). The table is written last and atomically, so a unit counts as done only
once both files are whole; a run killed mid-unit leaves at most a stray temporary file.
"""
import json
import os

import numpy as np

TABLE, VECTORS = ".json", ".npy"


def _atomic(path: str, write) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  write(tmp)
  os.replace(tmp, path)


def write_shard(out_dir: str, name: str, vectors: np.ndarray, table: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  def save_vectors(tmp):
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(vectors, np.float32))
  _atomic(os.path.join(out_dir, name + VECTORS), save_vectors)
  def save_table(tmp):
    with open(tmp, "w") as f:
      json.dump(table, f)
  _atomic(os.path.join(out_dir, name + TABLE), save_table)


def done(out_dir: str) -> list[str]:
  """Names of the units whose shard is complete, sorted."""
  if not os.path.isdir(out_dir):
    return []
  return sorted(n[:-len(TABLE)] for n in os.listdir(out_dir) if n.endswith(TABLE))


def read_table(out_dir: str, name: str) -> dict:
  with open(os.path.join(out_dir, name + TABLE)) as f:
    return json.load(f)


def read_vectors(out_dir: str, name: str, mmap: bool = True) -> np.ndarray:
  return np.load(os.path.join(out_dir, name + VECTORS), mmap_mode="r" if mmap else None)


def load(out_dir: str) -> tuple[np.ndarray, dict]:
  """Every shard concatenated in name order: (vectors (N, dim), table) where the table has
  per image "source", "key", "offset", "size", "meta" lists and per crop "image" (a row of
  the image lists) and "box" (N, 4)."""
  vectors, images, crop_image, crop_box = [], {}, [], []
  count = 0
  for name in done(out_dir):
    table = read_table(out_dir, name)
    vectors.append(np.asarray(read_vectors(out_dir, name)))
    for column, values in table["images"].items():
      images.setdefault(column, []).extend(values)
    crop_image.append(np.asarray(table["crop_image"], np.int64) + count)
    crop_box.append(np.asarray(table["crop_box"], np.float32).reshape(-1, 4))
    count += len(table["images"]["key"])
  if not vectors:
    raise FileNotFoundError(f"No embedding shards in {out_dir}.")
  return np.concatenate(vectors), dict(images, image=np.concatenate(crop_image),
                                       box=np.concatenate(crop_box))
