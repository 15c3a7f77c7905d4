"""Few-shot splits: exact counts per class, stable for a seed, different for another seed,
disjoint from the test split and validation cut from the labelled images only; a labelled
folder with too few images in a class is one error naming the class, before any compute."""
import numpy as np
import pytest
from PIL import Image

from kt_jax.data import fewshot, shipped
from kt_jax.errors import UserError


def _splits(task="mnist", n=10, val=2, seed=0, **options):
  import ml_collections
  data = ml_collections.ConfigDict({"task": task, "labels_per_class": n, "val_per_class": val,
                                    "task_options": {task: options} if options else {}})
  return fewshot.build_splits(data, seed)


def _labels(source, ids=None):
  return np.asarray([source[i]["label"] for i in range(len(source))])


def test_mnist_counts_seed_and_disjoint_from_test():
  a = _splits(seed=0, test_per_class=50)
  assert len(a.train_ids) == 80 and len(a.val_ids) == 20 and len(a.test) == 500
  assert np.bincount(_labels(a.train), minlength=10).tolist() == [8] * 10
  assert np.bincount(_labels(a.val), minlength=10).tolist() == [2] * 10
  labelled = np.concatenate([a.train_ids, a.val_ids])
  assert len(np.unique(labelled)) == 100
  assert not set(labelled) & set(a.test_ids)  # ids are digit indices in both
  # The test digits are the `mnist` eval task's (same N, test_per_class and seed).
  _, eval_test = shipped.mnist_fewshot_indices(10, 50, 0)
  assert set(a.test_ids) == set(eval_test)
  # The labels the records carry are the digits' own.
  digits, labels = shipped.mnist_digits()
  assert (_labels(a.train) == labels[a.train_ids]).all()
  b = _splits(seed=0, test_per_class=50)
  np.testing.assert_array_equal(a.train_ids, b.train_ids)
  np.testing.assert_array_equal(a.val_ids, b.val_ids)
  c = _splits(seed=1, test_per_class=50)
  assert set(c.train_ids) != set(a.train_ids)


def test_photos_counts():
  s = _splits("photos", n=5, val=1, crops_per_photo=8, crop_size=32)
  assert np.bincount(_labels(s.train)).tolist() == [4] * 9
  assert np.bincount(_labels(s.val)).tolist() == [1] * 9
  assert len(s.test) == 72


def test_sample_per_class_against_a_direct_draw():
  labels = np.repeat(np.arange(3), 7)
  chosen = fewshot.sample_per_class(labels, 4, seed=5)
  rng = np.random.default_rng(5)
  for c, got in enumerate(chosen):
    np.testing.assert_array_equal(got, rng.permutation(np.flatnonzero(labels == c))[:4])


def _folder(root, counts):
  for split in ("train", "test"):
    for name, n in counts.items():
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / split / name / f"{i}.png")


def test_folder_task_and_a_short_class(tmp_path):
  _folder(tmp_path, {"cat": 5, "dog": 3})
  fewshot.check(f"folder:{tmp_path}", 3, 1)
  s = _splits(f"folder:{tmp_path}", n=3, val=1)
  assert s.class_names == ("cat", "dog") and len(s.train_ids) == 4 and len(s.val_ids) == 2
  assert len(s.test) == 8
  with pytest.raises(UserError, match="class 'dog' has 3 image"):
    fewshot.check(f"folder:{tmp_path}", 4, 1)
