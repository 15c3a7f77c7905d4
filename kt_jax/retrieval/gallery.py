"""A gallery as units of work: each tar shard is one unit; a folder or ArrayRecord source is
cut into runs of `images_per_unit` images. A unit is what the embed stage writes as one
embedding shard, what a process takes whole, and what a resumed run skips once done.

A sample is {"kind", "source", "key", "image" (encoded bytes), "offset", "size", "meta"}:
enough to read the image again later without the unit (`manifest.read_image`).
"""
import dataclasses
import os
from typing import Callable, Iterator

from kt_jax import paths
from kt_jax.data import sources, tar_shards

KINDS = ("tar_shards", "image_folder", "arrayrecord")


@dataclasses.dataclass(frozen=True)
class Unit:
  name: str
  samples: Callable[[dict], Iterator[dict]]  # counts -> samples; counts gains "skipped"...


def _tar_unit(shard: str) -> Unit:
  def samples(counts):
    for record in tar_shards.iter_shard(shard, counts=counts):
      yield {"kind": "tar", "source": shard, "key": record["key"], "image": record["image"],
             "offset": int(record["offset"]), "size": int(record["size"]),
             "meta": record["meta"] if isinstance(record["meta"], dict) else {}}
  return Unit(os.path.basename(shard).removesuffix(".tar"), samples)


def _source_units(source, kind: str, where: str, images_per_unit: int,
                  key_of: Callable[[int], str]) -> list[Unit]:
  def unit(start: int) -> Unit:
    def samples(counts):
      del counts  # unreadable files come back as empty bytes, dropped when decoded
      for index in range(start, min(start + images_per_unit, len(source))):
        record = source[index]
        label = int(record["label"])
        yield {"kind": kind, "source": where(index), "key": key_of(index),
               "image": record["image"], "offset": 0, "size": -1,
               "meta": {"label": label} if label >= 0 else {}}
    return Unit(f"{start // images_per_unit:05d}", samples)
  return [unit(start) for start in range(0, len(source), images_per_unit)]


def units(kind: str, path: str, split: str = "train", images_per_unit: int = 1000) -> list[Unit]:
  """The gallery at `path` as units, in a fixed order."""
  path = paths.normalise(path)
  if kind == "tar_shards":
    return [_tar_unit(shard) for shard in tar_shards.list_shards(path)]
  if kind == "image_folder":
    source = sources.ImageFolderSource(path)
    return _source_units(source, "file", lambda i: source.paths[i], images_per_unit,
                         lambda i: os.path.relpath(source.paths[i], path))
  if kind == "arrayrecord":
    source = sources.ArrayRecordSource(path, split=split)
    return _source_units(source, f"arrayrecord:{split}", lambda i: path, images_per_unit, str)
  raise ValueError(f"Unknown gallery kind {kind!r}; kinds: {', '.join(KINDS)}.")
