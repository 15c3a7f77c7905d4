"""config.data -> a resumable stream of this process's batches.

  source: "shipped_pool"  natural-image crops that ship in packages (n, crop_size), plus
                          optionally unlabelled MNIST digits (never the eval test digits)
          "image_folder"  path/ with one subfolder per class, or a flat folder
          "arrayrecord"   a TFDS ArrayRecord dataset directory (path, split)
"""
import jax
import numpy as np

from kt_jax import paths
from kt_jax.data import pipeline, shipped, sources


class DataStream:
  """An iterator over local batches whose position can be saved and restored."""

  def __init__(self, dataset):
    self._iterator = iter(dataset)

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


def _unlabelled_digits(config) -> np.ndarray:
  """MNIST digits without labels, never any of the `mnist` eval task's test digits."""
  opts = config.eval.task_options.get("mnist", {})
  _, test = shipped.mnist_fewshot_indices(opts.get("labels_per_class", 10),
                                          opts.get("test_per_class", 100), config.eval.seed)
  digits = shipped.mnist_unlabelled(config.data.pool_mnist, exclude=test, seed=1)
  return shipped.resize_images(digits, config.data.pool_crop_size)


def build_source(config):
  data_cfg = config.data
  kind = data_cfg.source
  if kind == "shipped_pool":
    images = shipped.unlabelled_pool(data_cfg.pool_size, data_cfg.pool_crop_size, seed=0)
    if data_cfg.get("pool_mnist", 0):
      images = np.concatenate([images, _unlabelled_digits(config)])
    return sources.InMemorySource(images)
  if not data_cfg.get("path"):
    raise ValueError(f"config.data.path is required for data.source={kind!r}.")
  path = paths.normalise(data_cfg.path)  # file:// -> local; gs://... read via etils.epath
  if not paths.exists(path):
    raise FileNotFoundError(f"config.data.path={data_cfg.path!r} does not exist.")
  if kind == "image_folder":
    source = sources.ImageFolderSource(path)
  elif kind == "arrayrecord":
    source = sources.ArrayRecordSource(path, split=data_cfg.get("split", "train"))
  else:
    raise ValueError(f"Unknown data.source {kind!r}: shipped_pool, image_folder or arrayrecord.")
  if len(source) == 0:
    raise ValueError(f"No readable image in {data_cfg.path}.")
  return source


def train_transforms(config):
  aug = config.data.augment
  return pipeline.proteus_train_transforms(
      config.image_size, scale=tuple(aug.scale), hflip=aug.hflip,
      randaugment_config=aug.randaugment or None, re_prob=aug.random_erasing,
      mean=tuple(config.data.mean), std=tuple(config.data.std))


def build_train_stream(config) -> tuple[DataStream, int]:
  """(stream of local batches, optimizer steps per epoch)."""
  source = build_source(config)
  repeats = config.data.get("repeated_augmentation", 1)
  dataset = pipeline.make_train_loader(
      source, train_transforms(config), config.batch_size, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      worker_count=config.data.get("workers", 0), repeated_augmentation=repeats)
  steps_per_epoch = max(1, len(source) * repeats // config.batch_size)
  return DataStream(dataset), steps_per_epoch
