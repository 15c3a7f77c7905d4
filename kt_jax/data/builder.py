"""config.data -> a resumable stream of this process's batches.

  source: "shipped_pool"  natural-image crops that ship in packages (n, crop_size), plus
                          optionally unlabelled MNIST digits (never the eval test digits)
                          and unlabelled digit-segmentation images (`pool_digit_seg`)
          "image_folder"  path/ with one subfolder per class, or a flat folder
          "arrayrecord"   a TFDS ArrayRecord dataset directory (path, split)
          "tar_shards"    a folder of webdataset tar shards (img2dataset's layout), streamed
                          shard by shard, each process reading its own shards
          "manifest"      a retrieved transfer set (kt_jax/retrieval/manifest.py): gallery crops
                          cut at load time
"""
import os

import jax
import numpy as np
from absl import logging

from kt_jax import paths
from kt_jax import config_defaults
from kt_jax.data import pipeline, shipped, sources
from kt_jax.errors import UserError

SOURCES = ("shipped_pool", "image_folder", "arrayrecord", "tar_shards", "manifest")
# Options only one source reads; any other source wants them at their defaults.
_SOURCE_ONLY = {"pool_size": "shipped_pool", "pool_crop_size": "shipped_pool",
                "pool_mnist": "shipped_pool", "pool_digit_seg": "shipped_pool",
                "split": "arrayrecord"}


def _looks_like_arrayrecord(path: str) -> bool:
  """A TFDS-style ArrayRecord directory: dataset_info.json or *.array_record* shards."""
  if not os.path.isdir(path):
    return False
  with os.scandir(path) as entries:
    return any(e.name == "dataset_info.json" or ".array_record" in e.name for e in entries)


def validate(config) -> None:
  """Checks config.data and the batch size in milliseconds, before any teacher is loaded.

  A `data.path` given with the shipped pool (which reads no path) selects the path's source,
  image folder (or ArrayRecord when the folder holds shards), and logs that it did; any other
  option the chosen source ignores is an error, as is a path that is not there.
  """
  data = config.data
  if not config.batch_size > 0:
    raise UserError(f"config.batch_size must be positive, got {config.batch_size!r}.")
  if data.source not in SOURCES:
    raise UserError(f"Unknown config.data.source={data.source!r}; sources: {', '.join(SOURCES)}.")
  if data.source == "shipped_pool" and data.get("path"):
    data.source = "arrayrecord" if _looks_like_arrayrecord(data.path) else "image_folder"
    logging.info("config.data.path=%s given: training on it (data.source=%s), not on the "
                 "shipped pool.", data.path, data.source)
  if data.get("workers", 0) < 0 or data.get("repeated_augmentation", 1) < 1:
    raise UserError("config.data.workers must be >= 0 and data.repeated_augmentation >= 1.")
  if data.source == "shipped_pool":
    counts = [data.pool_size, data.get("pool_mnist", 0), data.get("pool_digit_seg", 0)]
    pool = sum(counts)
    if min(counts) < 0 or not (pool > 0 and data.pool_crop_size > 0):
      raise UserError("config.data.pool_size, pool_mnist and pool_digit_seg must be >= 0 with a "
                      "positive sum (photo crops, digits or both), and data.pool_crop_size "
                      "positive.")
    if data.get("holdout", 0) >= pool:
      raise UserError(f"config.data.holdout={data.holdout} leaves no training image of the "
                      f"{pool} pool images (pool_size + pool_mnist + pool_digit_seg).")
  if data.source != "shipped_pool":
    _check_path(data)
  if data.source == "tar_shards" and (data.get("workers", 0) or data.get("holdout", 0)
                                      or data.get("repeated_augmentation", 1) > 1):
    raise UserError("data.source=tar_shards streams in this process without random access: "
                    "set --config.data.workers=0 --config.data.holdout=0 "
                    "--config.data.repeated_augmentation=1.")
  defaults = config_defaults.training_config().data
  for key, source in _SOURCE_ONLY.items():
    if key in data and data.source != source and data[key] != defaults[key]:
      raise UserError(f"config.data.{key}={data[key]!r} applies only to data.source={source}, "
                      f"but data.source={data.source}: remove it.")


def _check_path(data) -> None:
  if not data.get("path"):
    raise UserError(f"config.data.path is required for data.source={data.source}: "
                    "--config.data.path=DIR")
  if "://" in data.path and not data.path.startswith("file://"):
    return  # a cloud path: checked when the source opens it
  if "{stage:" in data.path:
    return  # an earlier pipeline stage's output (e.g. DIGG's images): checked when it runs
  path = data.path.removeprefix("file://")
  if not os.path.exists(path):
    raise UserError(f"config.data.path={data.path} does not exist.")
  if data.source == "image_folder":
    if not os.path.isdir(path):
      raise UserError(f"config.data.path={data.path} is not a directory of images.")
    with os.scandir(path) as entries:
      if next(entries, None) is None:
        raise UserError(f"config.data.path={data.path} is an empty directory.")


class DataStream:
  """An iterator over local batches whose position can be saved and restored.

  `source` holds the training records; `holdout` the proxy images kept out of training
  (`data.holdout`), or None: stages measure on it whether the student generalises beyond its
  training images.
  """

  def __init__(self, dataset, source=None, holdout=None):
    self._iterator = iter(dataset)
    self.source, self.holdout = source, holdout

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state) -> None:
    self._iterator.set_state(state)

  def bad_records(self) -> int:
    return pipeline.bad_records(self._iterator)


def _held_out(config, task: str) -> tuple[dict, int]:
  """(options, seed) of the labelled task whose test images a transfer set leaves out:
  `data.exclude_test_of` (distillation stages) or the `eval` section (Proteus)."""
  if "exclude_test_of" in config.data:
    opts = config.data.exclude_test_of.to_dict()
    return opts, opts.get("seed", 0)
  return dict(config.eval.task_options.get(task, {})), config.eval.seed


def _unlabelled_digits(config) -> np.ndarray:
  """MNIST digits without labels, never any of the `mnist` task's test digits."""
  opts, seed = _held_out(config, "mnist")
  _, test = shipped.mnist_fewshot_indices(opts.get("labels_per_class", 10),
                                          opts.get("test_per_class", 100), seed)
  digits = shipped.mnist_unlabelled(config.data.pool_mnist, exclude=test, seed=1)
  return shipped.resize_images(digits, config.data.pool_crop_size)


def _unlabelled_digit_seg(config) -> np.ndarray:
  """Digit-segmentation images without masks, none of the `digit_seg` task's test digits."""
  from kt_jax.data import digit_segmentation
  opts, seed = _held_out(config, digit_segmentation.NAME)
  return digit_segmentation.unlabelled(
      config.data.pool_digit_seg, config.data.pool_crop_size, seed,
      opts.get("max_digits", digit_segmentation.DEFAULTS["max_digits"]),
      opts.get("test_per_class", digit_segmentation.DEFAULTS["test_per_class"]))


def build_source(config):
  data_cfg = config.data
  kind = data_cfg.source
  if kind == "shipped_pool":
    parts = []  # natural photo crops, unlabelled digits, or both (the proxy-set ablation)
    if data_cfg.pool_size:
      parts.append(shipped.unlabelled_pool(data_cfg.pool_size, data_cfg.pool_crop_size, seed=0))
    if data_cfg.get("pool_mnist", 0):
      parts.append(_unlabelled_digits(config))
    if data_cfg.get("pool_digit_seg", 0):
      parts.append(_unlabelled_digit_seg(config))
    return sources.InMemorySource(np.concatenate(parts))
  if not data_cfg.get("path"):
    raise UserError(f"config.data.path is required for data.source={kind!r}.")
  path = paths.normalise(data_cfg.path)  # file:// -> local; gs://... read via etils.epath
  if not paths.exists(path):
    raise UserError(f"config.data.path={data_cfg.path!r} does not exist.")
  if kind == "image_folder":
    source = sources.ImageFolderSource(path)
  elif kind == "arrayrecord":
    source = sources.ArrayRecordSource(path, split=data_cfg.get("split", "train"))
  elif kind == "tar_shards":
    from kt_jax.data import tar_shards  # pylint: disable=g-import-not-at-top
    source = tar_shards.first_samples(path, _TAR_PEEK)
  elif kind == "manifest":
    from kt_jax.retrieval import manifest  # pylint: disable=g-import-not-at-top
    source = manifest.ManifestSource(path)
  else:
    raise UserError(f"Unknown data.source {kind!r}: shipped_pool, image_folder or arrayrecord.")
  if len(source) == 0:
    raise UserError(f"No readable image in {data_cfg.path}.")
  return source


# The random-access stand-in of a tar stream (`DataStream.source`): its first samples, which
# stages read unaugmented, e.g. to fit statistics of the teacher's targets.
_TAR_PEEK = 256


def train_transforms(config):
  aug = config.data.augment
  return pipeline.proteus_train_transforms(
      config.image_size, scale=tuple(aug.scale), hflip=aug.hflip,
      randaugment_config=aug.randaugment or None, re_prob=aug.random_erasing,
      mean=tuple(config.data.mean), std=tuple(config.data.std))


def split_holdout(source, count: int, seed: int = 0):
  """(training source, held-out source): `count` records drawn with a fixed seed leave the
  training set; with count 0 the source is returned whole and the held-out part is None."""
  if count <= 0:
    return source, None
  if count >= len(source):
    raise ValueError(f"data.holdout={count} leaves no training image of {len(source)}.")
  order = np.random.default_rng(seed).permutation(len(source))
  return (sources.SubsetSource(source, np.sort(order[count:])),
          sources.SubsetSource(source, np.sort(order[:count])))


def holdout_images(config, holdout) -> np.ndarray:
  """The held-out records as the student sees them, without augmentation: whole images
  resized to `image_size` and normalised (float32 NHWC); undecodable records dropped."""
  loader = pipeline.make_eval_loader(
      holdout, pipeline.eval_transforms(config.image_size, crop_pct=1.0,
                                        mean=tuple(config.data.mean), std=tuple(config.data.std)),
      global_batch_size=len(holdout), shard_index=0, shard_count=1)
  batch = next(iter(loader))
  return np.asarray(batch["image"], np.float32)[np.asarray(batch["valid"], bool)]


def first_images(config, source, count: int) -> np.ndarray:
  """The first `count` records of `source` (in id order) as `holdout_images` prepares them:
  fixed, unaugmented images, e.g. to fit statistics of the teacher's targets once."""
  return holdout_images(config, sources.SubsetSource(source, np.arange(min(count, len(source)))))


def build_train_stream(config) -> tuple[DataStream, int]:
  """(stream of local batches, optimizer steps per epoch)."""
  if config.data.source == "tar_shards":
    return _tar_train_stream(config)
  source, holdout = split_holdout(build_source(config), config.data.get("holdout", 0))
  repeats = config.data.get("repeated_augmentation", 1)
  dataset = pipeline.make_train_loader(
      source, train_transforms(config), config.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      worker_count=config.data.get("workers", 0), repeated_augmentation=repeats)
  steps_per_epoch = max(1, len(source) * repeats // config.batch_size)
  return DataStream(dataset, source, holdout), steps_per_epoch


def _tar_train_stream(config) -> tuple[DataStream, int]:
  """Tar shards streamed shard by shard; an epoch's length is estimated from the first shard
  (counting every shard's samples would read the whole gallery before training starts)."""
  from kt_jax.data import tar_shards  # pylint: disable=g-import-not-at-top
  path = paths.normalise(config.data.path)
  stream = tar_shards.TarStream(path, seed=config.seed, shard_index=jax.process_index(),
                                shard_count=jax.process_count())
  dataset = pipeline.make_stream_loader(stream, train_transforms(config), config.batch_size,
                                        seed=config.seed)
  peek = build_source(config)
  first_shard = len(tar_shards.first_samples(stream.shards[0], tar_shards.ID_STRIDE))
  steps_per_epoch = max(1, first_shard * len(stream.shards) // config.batch_size)
  return DataStream(dataset, peek, None), steps_per_epoch
