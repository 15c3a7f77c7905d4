"""A minimal random-access reader of webdataset tar shards (the layout img2dataset writes).

A shard `00000.tar` holds samples as consecutive members sharing a key: `KEY.jpg` (or .jpeg,
.png, .webp, ...) with `KEY.cls` (the integer label as text) or `KEY.json` ({"label": int}).
The key is the member's path up to the first dot of its file name, as webdataset defines it.
Shards are indexed once (member headers only, plus the small label members); records are then
read by seeking to the image's bytes. Samples without an image or a label are skipped and
counted. Local shards and cloud URLs (gs://..., through etils.epath) both work.

This is the evaluation reader; streaming web-scale shards for training is a later step.
"""
import json
import logging
import tarfile

import numpy as np

from kt_jax import paths
from kt_jax.data import sources

IMAGE_EXTENSIONS = tuple(e.lstrip(".") for e in sources.IMG_EXTENSIONS)

_log = logging.getLogger(__name__)


def _split_key(member_name: str) -> tuple[str, str]:
  directory, _, base = member_name.rpartition("/")
  stem, _, extension = base.partition(".")
  return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _label(extension: str, data: bytes) -> int:
  if extension == "cls":
    return int(data.decode().strip())
  value = json.loads(data)
  return int(value["label"] if isinstance(value, dict) else value)


def index_shard(shard: str) -> tuple[list[tuple[int, int, str]], list[int], int]:
  """([(offset, size, key)] of each labelled image, [label], samples skipped)."""
  samples: dict[str, dict] = {}
  order = []
  with paths.as_path(shard).open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
    for member in tar:
      if not member.isfile():
        continue
      key, extension = _split_key(member.name)
      if key not in samples:
        samples[key] = {}
        order.append(key)
      if extension in IMAGE_EXTENSIONS and "image" not in samples[key]:
        samples[key]["image"] = (member.offset_data, member.size)
      elif extension in ("cls", "json") and "label" not in samples[key]:
        try:
          samples[key]["label"] = _label(extension, tar.extractfile(member).read())
        except (ValueError, KeyError, TypeError) as e:
          _log.warning("%s: unreadable label %s (%s)", shard, member.name, e)
  records, labels, skipped = [], [], 0
  for key in order:
    sample = samples[key]
    if "image" in sample and "label" in sample:
      records.append((*sample["image"], key))
      labels.append(sample["label"])
    else:
      skipped += 1
  return records, labels, skipped


def list_shards(path: str) -> list[str]:
  """The `*.tar` files directly in folder `path`, sorted."""
  root = paths.normalise(path)
  names = sorted(p.name for p in paths.as_path(root).iterdir() if p.name.endswith(".tar"))
  return [paths.join(root, name) for name in names]


class TarShardSource:
  """Labelled images of the webdataset shards in a folder, as a grain random-access source
  yielding {"image": encoded bytes, "label", "id"} like the other sources."""

  def __init__(self, path: str):
    self.root = paths.normalise(path)
    self.shards = list_shards(self.root)
    if not self.shards:
      raise FileNotFoundError(f"No .tar shards in {self.root}.")
    shard_ids, offsets, sizes, keys, labels = [], [], [], [], []
    self.skipped_samples = 0
    for shard_id, shard in enumerate(self.shards):
      records, shard_labels, skipped = index_shard(shard)
      self.skipped_samples += skipped
      for offset, size, key in records:
        shard_ids.append(shard_id)
        offsets.append(offset)
        sizes.append(size)
        keys.append(key)
      labels += shard_labels
    if self.skipped_samples:
      _log.warning("%s: skipped %d samples without an image or a label", self.root,
                   self.skipped_samples)
    self.shard_ids = np.asarray(shard_ids, np.int32)
    self.offsets, self.sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    self.keys = keys
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int):
    index = int(index)
    shard = self.shards[self.shard_ids[index]]
    try:
      with paths.as_path(shard).open("rb") as f:
        f.seek(int(self.offsets[index]))
        data = f.read(int(self.sizes[index]))
    except OSError as e:  # an empty record: dropped and counted by Decode
      _log.warning("Cannot read %s from %s: %s", self.keys[index], shard, e)
      data = b""
    return {"image": data, "label": int(self.labels[index]), "id": index}

  def describe(self, index: int) -> str:
    index = int(index)
    return f"{self.shards[self.shard_ids[index]]}:{self.keys[index]}"

  def __repr__(self) -> str:
    return f"TarShardSource(root={self.root!r}, shards={len(self.shards)}, len={len(self)})"
