"""Loaders: determinism, sharding, exact resumption, repeated augmentation, eval coverage."""
import collections
import json
import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from kt_jax.data import pipeline
from kt_jax.data import sources

SIZE = 16


def _photos(n):
  """n distinct small crops of a real photo."""
  cat = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((120, 80)))
  return np.stack([cat[i % 5 * 8:i % 5 * 8 + 40, i * 4:i * 4 + 48] for i in range(n)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """14 JPEGs in 2 classes plus a corrupt and a truncated file; returns (root, bad ids)."""
  root = tmp_path_factory.mktemp("pipeline_images")
  for i, image in enumerate(_photos(14)):
    os.makedirs(root / f"class{i % 2}", exist_ok=True)
    Image.fromarray(image).save(root / f"class{i % 2}/img{i:02d}.jpg")
  good = (root / "class0/img00.jpg").read_bytes()
  (root / "class0/img99_corrupt.jpg").write_bytes(b"\xff\xd8 garbage" * 50)
  (root / "class1/img99_truncated.jpg").write_bytes(good[:len(good) // 3])
  source = sources.ImageFolderSource(root)
  bad = {i for i, p in enumerate(source.paths) if "img99" in p}
  assert len(source) == 16 and len(bad) == 2
  return root, bad


def _train(source, batch=4, seed=0, **kwargs):
  kwargs = {"shard_index": 0, "shard_count": 1, **kwargs}
  return pipeline.make_train_loader(source, pipeline.proteus_train_transforms(SIZE), batch,
                                    seed, **kwargs)


def _ids(batches):
  return [b["id"].tolist() for b in batches]


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_layout_and_determinism():
  source = sources.InMemorySource(_photos(12), np.arange(12) % 3)
  first = _take(iter(_train(source, seed=7)), 4)
  again = _take(iter(_train(source, seed=7)), 4)
  other = _take(iter(_train(source, seed=8)), 4)
  batch = first[0]
  assert set(batch) == {"image", "label", "id"}
  assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
  np.testing.assert_array_equal(batch["label"], batch["id"] % 3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert _ids(first) != _ids(other)


def test_each_epoch_is_a_new_permutation():
  source = sources.InMemorySource(_photos(12))
  ids = np.concatenate(_ids(_train(source, num_epochs=3)))
  epochs = ids.reshape(3, 12)
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))
  assert len({tuple(e) for e in epochs}) == 3


@pytest.mark.parametrize("n", [16, 13])
def test_two_shards_are_disjoint_and_cover_the_epoch(n):
  source = sources.InMemorySource(_photos(n))
  shards = [_ids(_train(source, batch=4, shard_index=i, shard_count=2, num_epochs=1))
            for i in range(2)]
  assert all(len(b) == 2 for batches in shards for b in batches)
  assert len(shards[0]) == len(shards[1])  # Same step count on every process.
  ids = [np.concatenate(batches) for batches in shards]
  assert not set(ids[0]) & set(ids[1])
  both = np.concatenate(ids)
  # A finite stream is cut to whole global batches: 13 -> 12 records.
  assert len(both) == n // 4 * 4 and len(set(both)) == len(both)


def test_resume_mid_epoch_gives_the_same_batches(folder):
  root, bad = folder
  source = sources.ImageFolderSource(root)
  loader = _train(source, batch=2, num_epochs=2)
  full_it = iter(loader)
  full = list(full_it)
  it = iter(loader)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # Checkpoints store it as JSON.
  resumed = iter(_train(source, batch=2, num_epochs=2))
  resumed.set_state(state)
  rest = list(resumed)
  assert len(rest) == len(full) - 5 > 0
  for a, b in zip(full[5:], rest):
    np.testing.assert_array_equal(a["id"], b["id"])
    np.testing.assert_array_equal(a["image"], b["image"])  # Same augmentations.
  # Every good record exactly once per epoch; the bad ones dropped and counted twice.
  counts = collections.Counter(np.concatenate(_ids(full)))
  assert set(counts) == set(range(16)) - bad and set(counts.values()) == {2}
  assert pipeline.bad_records(full_it) == pipeline.bad_records(resumed) == 4
  assert pipeline.bad_record_ids(resumed) == sorted(list(bad) * 2)


def test_repeated_augmentation_counts():
  source = sources.InMemorySource(_photos(8))
  shards = [list(_train(source, batch=4, shard_index=i, shard_count=2, num_epochs=1,
                        repeated_augmentation=3)) for i in range(2)]
  ids = np.concatenate([b["id"] for s in shards for b in s])
  images = np.concatenate([b["image"] for s in shards for b in s])
  assert len(ids) == 24 and collections.Counter(ids) == {i: 3 for i in range(8)}
  for i in range(8):  # Three differently augmented copies, spread over both shards.
    copies = images[ids == i]
    assert not np.array_equal(copies[0], copies[1])
    assert not np.array_equal(copies[1], copies[2])
  per_shard = [set(np.concatenate([b["id"] for b in s])) for s in shards]
  assert per_shard[0] == per_shard[1] == set(range(8))


def test_eval_loader_covers_every_sample_once(folder):
  root, bad = folder
  source = sources.ImageFolderSource(root)
  transforms = pipeline.eval_transforms(SIZE)
  shards = [list(pipeline.make_eval_loader(source, transforms, 6, shard_index=i,
                                           shard_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3  # 16 -> padded to 18 -> 9 per process.
  valid_ids = np.concatenate([b["id"][b["valid"]] for s in shards for b in s])
  assert sorted(valid_ids) == sorted(set(range(16)) - bad)
  # Deterministic and in source order: shard 0 holds even positions.
  first = shards[0][0]
  assert first["id"].tolist() == [0, 2, 4]
  assert first["image"].shape == (3, SIZE, SIZE, 3)
  expected = transforms[2].apply(transforms[1].apply(
      np.asarray(Image.open(source.paths[2]).convert("RGB"))))
  np.testing.assert_allclose(first["image"][1], expected, atol=1e-6)


def test_eval_loader_pads_a_short_last_batch():
  source = sources.InMemorySource(_photos(5))
  batches = list(pipeline.make_eval_loader(source, pipeline.eval_transforms(SIZE), 4,
                                           shard_index=0, shard_count=1))
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
  assert batches[1]["id"].tolist()[:1] == [4]


def test_workers_resume_and_count_bad_records(folder):
  root, bad = folder
  source = sources.ImageFolderSource(root)
  loader = _train(source, batch=2, seed=3, worker_count=2)
  it = iter(loader)
  _take(it, 4)
  state = it.get_state()
  expected = _ids(_take(it, 20))  # > 2 epochs of 14 good records
  assert pipeline.bad_records(it) >= 2 and set(pipeline.bad_record_ids(it)) == bad
  it.close()
  resumed = iter(loader)
  resumed.set_state(state)
  assert _ids(_take(resumed, 20)) == expected
  resumed.close()
