"""Labelled tasks built from the real images that ship in packages (see `shipped.py`).

`mnist`: few-shot digits (N labels per class, a held-out test split).
`photos`: crops of the shipped colour photos, labelled by the photo they come from.
`cifar10`: the 20 CIFAR-10 test images in the foolbox wheel, split half/half (tiny: a smoke test).
"""
import dataclasses
from typing import Any, Mapping

import numpy as np

from kt_jax.data import shipped


@dataclasses.dataclass(frozen=True)
class LabelledTask:
  name: str
  train_images: np.ndarray  # uint8 (N, H, W, 3)
  train_labels: np.ndarray  # int (N,)
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _mnist(options, seed):
  tr_x, tr_y, te_x, te_y = shipped.mnist_fewshot(options.get("labels_per_class", 10),
                                                 options.get("test_per_class", 100), seed)
  return LabelledTask("mnist", tr_x, tr_y, te_x, te_y, tuple(str(i) for i in range(10)))


def _photos(options, seed):
  # Crops of one photo overlap: train crops come from the left half of every photo and test
  # crops from the right half, so no test pixel was seen in training.
  n, size = options.get("crops_per_photo", 24), options.get("crop_size", 96)
  tr_x, tr_y, names = shipped.photo_crops(n, size, seed, split="train")
  te_x, te_y, _ = shipped.photo_crops(n, size, seed + 1, split="test")
  return LabelledTask("photos", tr_x, tr_y, te_x, te_y, tuple(names))


def _cifar10(options, seed):
  images, labels = shipped.foolbox_images("cifar10")
  names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  half = len(order) // 2
  return LabelledTask("cifar10", images[order[:half]], labels[order[:half]],
                      images[order[half:]], labels[order[half:]], names)


_BUILDERS = {"mnist": _mnist, "photos": _photos, "cifar10": _cifar10}


def build(name: str, options: Mapping[str, Any] | None = None, seed: int = 0) -> LabelledTask:
  if name not in _BUILDERS:
    raise ValueError(f"Unknown task {name!r}; known: {', '.join(_BUILDERS)}")
  return _BUILDERS[name](dict(options or {}), seed)
