"""grain loaders: sharded, shuffled, resumable train batches and exactly-once eval batches.

Both loaders are `grain.IterDataset`s built with the dataset API:

  source -> seed -> shuffle -> [repeat each sample r times] -> repeat(epochs)
         -> transforms (Decode first; per-record rngs keyed by the *global* position)
         -> [: whole global batches] -> this process's block of each global batch
         -> to_iter_dataset (threads) -> drop undecodable records -> batch -> mp_prefetch

Every process reads a disjoint block of each global batch of the same global stream, so
shards are disjoint and cover each epoch, the global batch is the same for any process count,
and the augmentation a record gets does not depend on how many processes or workers read it. `iter(loader)` gives a grain iterator whose
`get_state()`/`set_state()` resume exactly (the state is the position in the stream plus
the bad-record tally; it is JSON, as Orbax's grain handler expects).

Undecodable records are dropped after the parallel stage by `_DropInvalid`, whose count
and first ids live in the iterator state; `bad_records(it)` / `bad_record_ids(it)` read
them back from any iterator, including one whose workers are separate processes.
"""
import functools
import logging
import sys
from typing import Any, Callable, Sequence

import grain
import numpy as np

from kt_jax.data import randaugment
from kt_jax.data import transforms as T

_log = logging.getLogger(__name__)

BAD_COUNT_KEY = "kt_bad_records"
BAD_IDS_KEY = "kt_bad_ids"
STREAM_SKIPPED_KEY = "kt_tar_skipped"  # tar_shards.TarStream's count of corrupt samples
_KEEP_BAD_IDS = 16
_LOG_FIRST = 5


def proteus_train_transforms(image_size: int = 224, *, scale=(0.08, 1.0),
                             ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                             randaugment_config: str | None = "rand-m9-mstd0.5-inc1",
                             re_prob: float = 0.25, re_mode: str = "pixel",
                             mean=T.IMAGENET_DEFAULT_MEAN, std=T.IMAGENET_DEFAULT_STD,
                             interpolation: str = "bicubic") -> list:
  """DeiT's train recipe (timm create_transform, as Proteus uses it), mixup left out."""
  fill = tuple(min(255, round(255 * m)) for m in mean)
  recipe = [T.Decode(), T.RandomResizedCrop(image_size, scale=scale, ratio=tuple(ratio),
                                            interpolation=interpolation)]
  if hflip > 0:
    recipe.append(T.RandomHorizontalFlip(hflip))
  if randaugment_config:
    recipe.append(randaugment.RandAugment.from_config(
        randaugment_config, fill=fill, interpolation=interpolation))
  recipe.append(T.Normalize(mean, std))
  if re_prob > 0:
    recipe.append(T.RandomErasing(re_prob, mode=re_mode))
  return recipe


def eval_transforms(image_size: int = 224, crop_pct: float = 0.875,
                    interpolation: str = "bicubic", mean=T.IMAGENET_DEFAULT_MEAN,
                    std=T.IMAGENET_DEFAULT_STD) -> list:
  """DeiT's eval recipe: bicubic resize to size / crop_pct, centre crop, normalise."""
  return [T.Decode(), T.ResizeCenterCrop(image_size, crop_pct, interpolation),
          T.Normalize(mean, std)]


class _RepeatEach(grain.MapDataset):
  """Each epoch lists every parent record `times` times in a row (DeiT's RASampler order),
  so a strided shard puts the copies on different processes; epoch e reads the parent's
  epoch e, which keeps the upstream shuffle's per-epoch reseeding."""

  def __init__(self, parent: grain.MapDataset, times: int):
    super().__init__(parent)
    self._times = times
    self._parent_length = len(parent)

  def __len__(self) -> int:
    return self._parent_length * self._times

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, len(self))
    return self._parent[epoch * self._parent_length + position // self._times]

  def __str__(self) -> str:
    return f"_RepeatEach(times={self._times})"


class _BlockShard(grain.MapDataset):
  """Of each global batch of `global_batch` records, shard p reads the contiguous block
  [p * local, (p + 1) * local). Concatenating the processes' local batches in process order
  (what `jax.make_array_from_process_local_data` does) then rebuilds exactly the global batch
  one process would read, so 1 and N processes train on identical batches, row for row."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._local, self._index = global_batch, global_batch // count, index
    self._length = len(parent) // count

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, offset = divmod(index, self._local)
    return self._parent[batch * self._global + self._index * self._local + offset]

  def __str__(self) -> str:
    return f"_BlockShard(index={self._index}, local={self._local})"


class _PadToMultiple(grain.MapDataset):
  """Pads to a multiple of `multiple` with copies of the first records marked valid=False,
  so every process of an eval run gets the same number of full batches."""

  def __init__(self, parent: grain.MapDataset, multiple: int):
    super().__init__(parent)
    self._parent_length = len(parent)
    self._length = -(-self._parent_length // multiple) * multiple

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    record = self._parent[index % self._parent_length]
    if record is None:
      return None
    return {**record, "valid": index < self._parent_length}

  def __str__(self) -> str:
    return f"_PadToMultiple(length={self._length})"


class _DropInvalidIterator(grain.DatasetIterator):
  """Skips records `Decode` marked (image=None); the tally is part of the state."""

  def __init__(self, parent, describe: Callable[[int], str] | None, source_size: int):
    super().__init__(parent)
    self._describe = describe
    self._count = 0
    self._ids = []
    self._source_size = source_size

  def __next__(self):
    in_a_row = 0
    while True:
      record = next(self._parent)
      if record is None or record.get("image") is not None:
        return record
      self._count += 1
      in_a_row += 1
      if in_a_row > max(self._source_size, 1):  # a whole pass without one readable image
        raise ValueError(f"No readable image: the last {in_a_row} records (the whole source) "
                         f"could not be decoded, e.g. {record.get('error')}")
      if len(self._ids) < _KEEP_BAD_IDS:
        self._ids.append(int(record["id"]))
      if self._count <= _LOG_FIRST:
        where = self._describe(record["id"]) if self._describe else f"id {record['id']}"
        _log.warning("Dropped undecodable record %s: %s", where, record.get("error"))

  def get_state(self):
    return {"parent": self._parent.get_state(), BAD_COUNT_KEY: self._count,
            BAD_IDS_KEY: list(self._ids)}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._count = int(state[BAD_COUNT_KEY])
    self._ids = list(state[BAD_IDS_KEY])


class _DropInvalid(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, describe=None, source_size: int = 0):
    super().__init__(parent)
    self._describe = describe
    self._source_size = source_size

  def __iter__(self):
    return _DropInvalidIterator(self._parent.__iter__(), self._describe, self._source_size)

  def __str__(self) -> str:
    return "_DropInvalid"


def _walk_state(state, key: str):
  # Worker states nest inside grain's multiprocess/interleave state; find ours anywhere.
  if isinstance(state, dict):
    for k, v in state.items():
      if k == key:
        yield v
      else:
        yield from _walk_state(v, key)
  elif isinstance(state, (list, tuple)):
    for v in state:
      yield from _walk_state(v, key)


def _state_of(iterator_or_state) -> Any:
  if hasattr(iterator_or_state, "get_state"):
    return iterator_or_state.get_state()
  return iterator_or_state


def bad_records(iterator_or_state) -> int:
  """Records dropped so far by a loader iterator (all worker processes): undecodable ones,
  plus samples a tar stream skipped as corrupt (`tar_shards.TarStream`)."""
  state = _state_of(iterator_or_state)
  return int(sum(_walk_state(state, BAD_COUNT_KEY)) + sum(_walk_state(state, STREAM_SKIPPED_KEY)))


def bad_record_ids(iterator_or_state) -> list[int]:
  """Source ids of the first few dropped records (up to 16 per worker), sorted."""
  return sorted(i for ids in _walk_state(_state_of(iterator_or_state), BAD_IDS_KEY)
                for i in ids)


def _apply(ds: grain.MapDataset, transforms: Sequence[Any]) -> grain.MapDataset:
  for transform in transforms:
    if isinstance(transform, grain.transforms.RandomMap):
      ds = ds.random_map(transform)
    elif isinstance(transform, grain.transforms.Filter):
      ds = ds.filter(transform)
    else:  # grain.transforms.Map or a plain callable.
      ds = ds.map(transform)
  return ds


def _shard_args(global_batch_size, shard_index, shard_count):
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                     f"shard_count {shard_count}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count}).")
  return shard_index, shard_count, global_batch_size // shard_count


def _finish(ds: grain.MapDataset, source, local_batch: int, worker_count: int,
            read_options: grain.ReadOptions | None, batch_fn=None, drop_remainder=True):
  read_options = read_options or grain.ReadOptions(
      num_threads=8, prefetch_buffer_size=2 * local_batch)
  it = _DropInvalid(ds.to_iter_dataset(read_options), getattr(source, "describe", None),
                    len(source))
  it = it.batch(local_batch, drop_remainder=drop_remainder, batch_fn=batch_fn)
  if worker_count > 0:
    # grain's worker start-up reads absl flags; outside absl.app nobody parsed them (their
    # defaults are what we want), and reading unparsed flags raises.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def make_train_loader(source, transforms: Sequence[Any], global_batch_size: int, seed: int,
                      shard_index: int | None = None, shard_count: int | None = None,
                      worker_count: int = 0, repeated_augmentation: int = 1,
                      num_epochs: int | None = None, *,
                      read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Local batches {"image", "label", "id"} of `global_batch_size // shard_count` records.

  shard_index/shard_count default to jax.process_index()/process_count(). Every epoch is
  reshuffled; with `repeated_augmentation=r` an epoch holds each sample r times in a row of
  the global order (DeiT's RASampler with r=3; unlike it, the epoch is not cut back to N),
  each copy augmented differently. `num_epochs=None` repeats forever; a finite stream is cut
  to whole global batches so all processes yield the same number of batches (as long as
  no record is dropped as undecodable). Deterministic given the seed (and worker_count).
  """
  shard_index, shard_count, local_batch = _shard_args(global_batch_size, shard_index,
                                                      shard_count)
  if repeated_augmentation < 1:
    raise ValueError(f"repeated_augmentation must be >= 1, got {repeated_augmentation}.")
  ds = grain.MapDataset.source(source).seed(seed).shuffle()
  if repeated_augmentation > 1:
    ds = _RepeatEach(ds, repeated_augmentation)
  ds = _apply(ds.repeat(num_epochs), transforms)
  if len(ds) < sys.maxsize:
    ds = ds[:len(ds) // global_batch_size * global_batch_size]
  ds = _BlockShard(ds, global_batch_size, shard_index, shard_count)
  return _finish(ds, source, local_batch, worker_count, read_options)


def _pad_batch(records: Sequence[dict], batch_size: int) -> dict:
  """Stacks records and pads a short last batch with zeros, label/id -1, valid False."""
  batch = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
  missing = batch_size - len(records)
  if missing > 0:
    fills = {"label": -1, "id": -1, "valid": False}
    batch = {k: np.concatenate([v, np.full((missing,) + v.shape[1:], fills.get(k, 0),
                                           v.dtype)]) for k, v in batch.items()}
  return batch


def make_eval_loader(source, transforms: Sequence[Any], global_batch_size: int,
                     shard_index: int | None = None, shard_count: int | None = None,
                     worker_count: int = 0, *, seed: int = 0,
                     read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """One pass in source order; every record appears exactly once with valid=True.

  The global stream is padded to whole global batches (valid=False copies) before
  sharding, so each process yields the same number of full batches; a batch left short
  by dropped undecodable records is padded too (label/id -1, valid False).
  """
  shard_index, shard_count, local_batch = _shard_args(global_batch_size, shard_index,
                                                      shard_count)
  ds = _PadToMultiple(grain.MapDataset.source(source), global_batch_size)
  ds = _apply(ds.seed(seed), transforms)[shard_index::shard_count]
  batch_fn = functools.partial(_pad_batch, batch_size=local_batch)
  return _finish(ds, source, local_batch, worker_count, read_options, batch_fn=batch_fn,
                 drop_remainder=False)


def make_stream_loader(stream: grain.IterDataset, transforms: Sequence[Any],
                       global_batch_size: int, seed: int, shard_index: int | None = None,
                       shard_count: int | None = None) -> grain.IterDataset:
  """Local batches of a stream that already holds only this process's records (e.g.
  `tar_shards.TarStream`, which deals shards to processes); transforms run in this process
  and their per-record rngs continue across resumption (grain keeps the count in the state).
  Undecodable records are dropped and counted as in `make_train_loader`."""
  shard_index, shard_count, local_batch = _shard_args(global_batch_size, shard_index,
                                                      shard_count)
  ds = stream
  for transform in transforms:
    if isinstance(transform, grain.transforms.RandomMap):
      ds = ds.random_map(transform, seed=seed * 1_000_003 + shard_index)
    else:
      ds = ds.map(transform)
  ds = _DropInvalid(ds, getattr(stream, "describe", None), source_size=1 << 24)
  return ds.batch(local_batch, drop_remainder=True)
