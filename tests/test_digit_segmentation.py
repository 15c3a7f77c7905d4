"""The digit-segmentation task: labels where the ink is, disjoint splits, determinism, the
few-shot registration and the in-domain transfer pool."""
import ml_collections
import numpy as np
from PIL import Image

from kt_jax import config_defaults
from kt_jax.data import builder, digit_segmentation as ds, fewshot, shipped


def test_mask_labels_the_pasted_ink_and_ignores_its_rim():
  digits, classes = shipped.mnist_digits()
  rng = np.random.default_rng(0)
  background = np.full((64, 64, 3), 100.0)
  image, mask = ds.compose(background, [digits[7]], [int(classes[7])], rng)
  # Replay the draws: side, then position (compose's order).
  replay = np.random.default_rng(0)
  side = int(replay.integers(int(0.4 * 64), int(0.75 * 64) + 1))
  y, x = (int(v) for v in replay.integers(0, 64 - side + 1, 2))
  ink = np.asarray(Image.fromarray(digits[7]).resize((side, side),
                                                     Image.Resampling.BICUBIC)) / 255.0
  want = np.zeros((64, 64), np.uint8)
  window = want[y:y + side, x:x + side]
  window[ink >= 0.5] = classes[7] + 1
  window[(ink >= 0.1) & (ink < 0.5)] = ds.IGNORE
  np.testing.assert_array_equal(mask, want)
  # Outside the pasted box the photo is untouched; ink pixels contrast with it.
  outside = np.ones((64, 64), bool)
  outside[y:y + side, x:x + side] = False
  assert np.all(image[outside] == 100)
  assert np.abs(image[mask == classes[7] + 1].astype(int) - 100).mean() > 60


def test_splits_are_deterministic_disjoint_and_labelled():
  a = ds.make_split("train", 40, 48, seed=3)
  b = ds.make_split("train", 40, 48, seed=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = ds.make_split("train", 40, 48, seed=4)
  assert not np.array_equal(a[0], c[0])
  images, masks, classes = a
  assert images.shape == (40, 48, 48, 3) and masks.shape == (40, 48, 48)
  assert set(np.unique(masks)) <= set(range(ds.NUM_CLASSES)) | {ds.IGNORE}
  shown = [set(np.unique(m)) - {0, ds.IGNORE} for m in masks]
  assert all(not s for s, c in zip(shown, classes) if c == 0)  # no digit: all background
  # an image's class is the first digit pasted (a later one may hide it, rarely)
  assert np.mean([c in s for s, c in zip(shown, classes) if c]) > 0.9
  train, test = ds.digit_pools(50, seed=3)
  assert len(np.intersect1d(train, test)) == 0 and len(test) == 500
  assert len(train) + len(test) == len(shipped.mnist_digits()[0])


def test_fewshot_task_draws_n_images_per_class():
  data = config_defaults.finetune_config().data
  data.task, data.labels_per_class, data.val_per_class = "digit_seg", 3, 1
  data.task_options = ml_collections.ConfigDict(
      {"digit_seg": {"train_images": 400, "test_images": 30, "size": 32}})
  assert fewshot.task_kind("digit_seg") == fewshot.SEGMENTATION
  splits = fewshot.build_splits(data, seed=0)
  assert splits.num_classes == 11 and len(splits.train_ids) == 22 and len(splits.val_ids) == 11
  assert len(splits.test) == 30 and splits.ignore_index == 255
  record = splits.train[0]
  assert record["image"].shape == (32, 32, 3) and record["mask"].shape == (32, 32)


def test_transfer_pool_of_segmentation_images_leaves_the_test_digits_out():
  c = config_defaults.distill_task_config()
  c.data.pool_size, c.data.pool_digit_seg, c.data.pool_crop_size = 0, 12, 32
  builder.validate(c)
  source = builder.build_source(c)
  assert len(source) == 12 and source[0]["image"].shape == (32, 32, 3)
  # The transfer images are train-side draws, not the labelled train split's images.
  labelled = ds.make_split("train", 12, 32, seed=0)[0]
  assert not any(np.array_equal(source[i]["image"], labelled[i]) for i in range(12))
