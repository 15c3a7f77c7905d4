"""A minimal random-access reader of webdataset tar shards (the layout img2dataset writes).

A shard `00000.tar` holds samples as consecutive members sharing a key: `KEY.jpg` (or .jpeg,
.png, .webp, ...) with `KEY.cls` (the integer label as text) or `KEY.json` ({"label": int}).
The key is the member's path up to the first dot of its file name, as webdataset defines it.
Shards are indexed once (member headers only, plus the small label members); records are then
read by seeking to the image's bytes. Samples without an image or a label are skipped and
counted. Local shards and cloud URLs (gs://..., through etils.epath) both work.

`TarShardSource` (random access, every shard indexed up front) serves labelled eval tasks.
`TarStream` streams web-scale galleries and transfer sets shard by shard (`data.source =
"tar_shards"`): labels are optional (-1), each process reads its own shards, the position is
part of the iterator state, and truncated shards and members are skipped and counted.
`write_shards` writes such shards (tests, galleries built from arrays).
"""
import io
import json
import logging
import os
import tarfile
from typing import Iterable, Iterator

import grain
import numpy as np

from kt_jax import paths
from kt_jax.data import pipeline, sources

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


# A record's id is shard_number * ID_STRIDE + its position in the shard: stable whatever the
# process count, epoch or resumption.
ID_STRIDE = 1 << 24
STREAM_SKIPPED_KEY = pipeline.STREAM_SKIPPED_KEY
STREAM_TRUNCATED_KEY = "kt_tar_truncated_shards"


def write_shards(samples: Iterable[dict], out_dir: str, per_shard: int,
                 image_format: str = "JPEG", quality: int = 90) -> list[str]:
  """Writes samples {"key", "image": uint8 HWC array or encoded bytes, "json": dict} as
  `00000.tar, 00001.tar, ...` of `per_shard` samples (img2dataset's layout: KEY.jpg +
  KEY.json); returns the shard paths. Members are written in key order within a sample."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  extension = {"JPEG": "jpg", "PNG": "png"}[image_format]
  written, tar, count = [], None, 0

  def add(name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  for sample in samples:
    if tar is None or count == per_shard:
      if tar is not None:
        tar.close()
      written.append(os.path.join(out_dir, f"{len(written):05d}.tar"))
      tar, count = tarfile.open(written[-1], "w"), 0
    image = sample["image"]
    if isinstance(image, np.ndarray):
      buffer = io.BytesIO()
      Image.fromarray(image).save(buffer, format=image_format, quality=quality)
      image = buffer.getvalue()
    add(f"{sample['key']}.{extension}", image)
    add(f"{sample['key']}.json", json.dumps(sample.get("json", {})).encode())
    count += 1
  if tar is not None:
    tar.close()
  return written


def _sample_record(key: str, parts: dict, shard: str, position: int) -> dict | None:
  if "image" not in parts or parts.get("broken"):
    return None
  meta = parts.get("json", {})
  label = parts.get("cls", meta.get("label", -1) if isinstance(meta, dict) else -1)
  return {"key": key, "image": parts["image"], "label": int(label), "meta": meta,
          "shard": shard, "offset": parts["offset"], "size": len(parts["image"]),
          "position": position}


def iter_shard(shard: str, skip: int = 0, counts: dict | None = None) -> Iterator[dict]:
  """The samples of one shard in order, from the `skip`-th on: {"key", "image" (encoded
  bytes), "label" (-1 if none), "meta" (the KEY.json dict), "shard", "offset", "size" (of the
  image member, for random access later), "position" (the sample's index in the shard)}.

  Members of a sample are consecutive (webdataset's rule). A sample without an image, an
  unreadable metadata member, or a truncated shard (the rest of it is lost) is skipped and
  counted in `counts` ("skipped", "truncated_shards"); skipped samples count towards `skip`
  like read ones, so a resumed position lands on the same sample.
  """
  counts = counts if counts is not None else {}
  position, key, parts = 0, None, {}

  def finish():
    nonlocal position
    record = _sample_record(key, parts, shard, position) if position >= skip else None
    if position >= skip and record is None:
      counts["skipped"] = counts.get("skipped", 0) + 1
      _log.warning("%s: sample %s lacks an image or has a broken member; skipped", shard, key)
    position += 1
    return record

  try:
    with paths.as_path(shard).open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for member in tar:
        if not member.isfile():
          continue
        member_key, extension = _split_key(member.name)
        if member_key != key:
          if key is not None and (record := finish()) is not None:
            yield record
          key, parts = member_key, {}
        if position < skip:  # resuming: headers only, no data read
          continue
        try:
          if extension in IMAGE_EXTENSIONS and "image" not in parts:
            parts["image"], parts["offset"] = tar.extractfile(member).read(), member.offset_data
          elif extension == "json":
            parts["json"] = json.loads(tar.extractfile(member).read())
          elif extension == "cls":
            parts["cls"] = int(tar.extractfile(member).read().decode().strip())
        except (ValueError, UnicodeDecodeError) as e:
          _log.warning("%s: unreadable member %s (%s)", shard, member.name, e)
          parts["broken"] = True
    if key is not None and (record := finish()) is not None:
      yield record
  except (tarfile.TarError, EOFError, OSError) as e:
    counts["truncated_shards"] = counts.get("truncated_shards", 0) + 1
    if key is not None and position >= skip:
      counts["skipped"] = counts.get("skipped", 0) + 1
    _log.warning("%s: truncated or corrupt after %d samples (%s); rest of the shard skipped",
                 shard, position, e)


class SampleListSource:
  """Samples held in memory as encoded bytes, a random-access source like the others."""

  def __init__(self, records: list[dict]):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    record = self.records[int(index)]
    return {"image": record["image"], "label": record["label"], "id": int(index)}

  def describe(self, index: int) -> str:
    record = self.records[int(index)]
    return f"{record['shard']}:{record['key']}"


def first_samples(path: str, count: int) -> SampleListSource:
  """The first `count` readable samples of a shard, or of a folder's shards in order."""
  path = paths.normalise(path)
  shards = [path] if path.endswith(".tar") else list_shards(path)
  records = []
  for shard in shards:
    for record in iter_shard(shard):
      if len(records) == count:
        return SampleListSource(records)
      records.append(record)
  return SampleListSource(records)


def shards_of_process(num_shards: int, epoch: int, seed: int, shard_index: int,
                      shard_count: int, shuffle: bool = True) -> np.ndarray:
  """Shard numbers process `shard_index` reads in `epoch`: every epoch deals a fresh
  permutation (the same on every process) round-robin over the processes."""
  order = np.arange(num_shards)
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(num_shards)
  return order[shard_index::shard_count]


class TarStream(grain.IterDataset):
  """This process's samples of a folder of tar shards, streamed shard by shard, as records
  {"image" (bytes), "label", "id"} like the random-access sources.

  Shards are dealt to processes round-robin (a fresh order per epoch when `shuffle`);
  samples keep their order within a shard (no shuffle buffer: the position stays a few
  integers). `num_epochs=None` repeats forever.
  """

  def __init__(self, path: str, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
               num_epochs: int | None = None, shuffle: bool = True):
    super().__init__()
    self.root = paths.normalise(path)
    self.shards = list_shards(self.root)
    if len(self.shards) < shard_count:
      raise ValueError(f"{self.root}: {len(self.shards)} shards for {shard_count} processes; "
                       "every process needs at least one shard.")
    self.seed, self.shard_index, self.shard_count = seed, shard_index, shard_count
    self.num_epochs, self.shuffle = num_epochs, shuffle

  def shards_for_epoch(self, epoch: int) -> np.ndarray:
    return shards_of_process(len(self.shards), epoch, self.seed, self.shard_index,
                             self.shard_count, self.shuffle)

  def describe(self, record_id: int) -> str:
    shard, position = divmod(int(record_id), ID_STRIDE)
    return f"{self.shards[shard]}: sample {position}"

  def __iter__(self):
    return _TarStreamIterator(self)

  def __str__(self) -> str:
    return f"TarStream(root={self.root!r}, process {self.shard_index}/{self.shard_count})"


class _TarStreamIterator(grain.DatasetIterator):

  def __init__(self, stream: TarStream):
    super().__init__()
    self._stream = stream
    self._epoch = self._position = self._sample = 0
    self._counts = {"skipped": 0, "truncated_shards": 0}
    self._samples = None

  def _open(self):
    shard = int(self._stream.shards_for_epoch(self._epoch)[self._position])
    self._shard_number = shard
    self._samples = iter_shard(self._stream.shards[shard], skip=self._sample,
                               counts=self._counts)

  def __next__(self):
    while True:
      if self._stream.num_epochs is not None and self._epoch >= self._stream.num_epochs:
        raise StopIteration
      if self._samples is None:
        self._open()
      record = next(self._samples, None)
      if record is None:  # shard done: the next one (or the next epoch)
        self._samples, self._sample, self._position = None, 0, self._position + 1
        if self._position == len(self._stream.shards_for_epoch(self._epoch)):
          self._epoch, self._position = self._epoch + 1, 0
        continue
      # Positions count skipped samples too, so a resumed shard restarts after this one.
      self._sample = record["position"] + 1
      return {"image": record["image"], "label": record["label"],
              "id": self._shard_number * ID_STRIDE + record["position"]}

  def get_state(self):
    return {"epoch": self._epoch, "position": self._position, "sample": self._sample,
            STREAM_SKIPPED_KEY: self._counts["skipped"],
            STREAM_TRUNCATED_KEY: self._counts["truncated_shards"]}

  def set_state(self, state):
    self._epoch, self._position = int(state["epoch"]), int(state["position"])
    self._sample = int(state["sample"])
    self._counts = {"skipped": int(state[STREAM_SKIPPED_KEY]),
                    "truncated_shards": int(state[STREAM_TRUNCATED_KEY])}
    self._samples = None
