"""A retrieved transfer set on disk (`manifest.jsonl`, one row per gallery crop) and its grain
source, which reads each image from where the gallery holds it and cuts the crop at load time.

A row: {"kind" (tar | file | arrayrecord:<split>), "source" (shard, file or dataset
directory), "key", "offset", "size" (the image's bytes inside a tar shard), "box" (relative
top, left, bottom, right), "query", "query_label", "score", "rank", "meta"}.
"""
import json
import threading

import numpy as np

from kt_jax import paths
from kt_jax.data import sources, transforms
from kt_jax.retrieval import crops

MANIFEST = "manifest.jsonl"


def write(path: str, rows: list[dict]) -> None:
  paths.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read(path: str) -> list[dict]:
  if paths.isdir(path):
    path = paths.join(path, MANIFEST)
  return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


_ARRAYRECORDS: dict = {}
_LOCK = threading.Lock()


def read_image_bytes(row: dict) -> bytes:
  """The encoded image a row names, from a tar shard's byte range, a file or ArrayRecord."""
  kind = row["kind"]
  if kind == "tar":
    with paths.as_path(row["source"]).open("rb") as f:
      f.seek(int(row["offset"]))
      return f.read(int(row["size"]))
  if kind == "file":
    return sources.read_bytes(row["source"])
  if kind.startswith("arrayrecord:"):
    split = kind.partition(":")[2]
    with _LOCK:
      source = _ARRAYRECORDS.setdefault((row["source"], split),
                                        sources.ArrayRecordSource(row["source"], split))
    return source[int(row["key"])]["image"]
  raise ValueError(f"Unknown manifest row kind {kind!r}.")


def load_crop(row: dict) -> np.ndarray:
  """The row's crop as uint8 RGB (H, W, 3), at the gallery image's own resolution."""
  return crops.cut(transforms.decode_image(read_image_bytes(row)), row["box"])


class ManifestSource:
  """The manifest's crops as a random-access grain source {"image", "label": -1, "id"}:
  `image` is the decoded crop, or empty bytes when the image cannot be read or decoded (the
  loader's Decode then drops and counts it, as for any other source)."""

  def __init__(self, path: str):
    self.path = path
    self.rows = read(path)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int):
    index = int(index)
    try:
      image = load_crop(self.rows[index])
    except Exception:  # pylint: disable=broad-except
      image = b""
    return {"image": image, "label": -1, "id": index}

  def describe(self, index: int) -> str:
    row = self.rows[int(index)]
    return f"{row['source']}:{row['key']} box {row['box']}"

  def __repr__(self) -> str:
    return f"ManifestSource({self.path!r}, len={len(self)})"
