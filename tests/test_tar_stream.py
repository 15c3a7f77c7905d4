"""Streaming webdataset tar shards: per-process shards, corrupt members, truncation, resume."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from kt_jax.data import pipeline, shipped, tar_shards
from kt_jax.data import transforms as T

PER_SHARD = 6


def _images():
  images, labels, _ = shipped.photo_crops(3, 40, seed=1)  # 27 crops of 9 shipped photos
  return images, labels


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """5 shards of shipped photo crops; sample 7's image is garbage, sample 10's JSON is
  broken, and the last shard is cut inside the image of its third sample."""
  root = str(tmp_path_factory.mktemp("shards"))
  images, labels = _images()
  samples = [{"key": f"s{i:04d}", "image": image, "json": {"label": int(label)}}
             for i, (image, label) in enumerate(zip(images, labels))]
  samples[7]["image"] = b"\xff\xd8 not a jpeg"
  written = tar_shards.write_shards(samples, root, PER_SHARD)
  # Sample 10's JSON member, rewritten as invalid JSON (same shard, same position).
  shard = written[1]
  with tarfile.open(shard) as tar:
    members = [(m, tar.extractfile(m).read()) for m in tar]
  with tarfile.open(shard, "w") as tar:
    for member, data in members:
      if member.name == "s0010.json":
        data = b"{not json"
        member.size = len(data)
      tar.addfile(member, io.BytesIO(data))
  with tarfile.open(written[-1]) as tar:
    cut = [m for m in tar if m.name.endswith(".jpg")][2].offset_data + 10
  with open(written[-1], "r+b") as f:
    f.truncate(cut)
  last_start = PER_SHARD * (len(written) - 1)
  readable = [i for i in range(len(samples)) if i != 10 and not last_start + 2 <= i]
  return {"root": root, "shards": written, "labels": labels, "readable": readable,
          "bad_image": 7, "skipped": 2}  # s0010 (broken JSON) and the truncated sample


def _record_index(record_id: int) -> int:
  shard, position = divmod(int(record_id), tar_shards.ID_STRIDE)
  return shard * PER_SHARD + position


def _read_all(stream):
  iterator = iter(stream)
  return [r for r in iterator], iterator.get_state()


def test_processes_read_disjoint_shards_covering_the_readable_samples(shards):
  seen, skipped, truncated = [], 0, 0
  for index in range(2):
    records, state = _read_all(tar_shards.TarStream(shards["root"], seed=3, shard_index=index,
                                                    shard_count=2, num_epochs=1))
    seen += [_record_index(r["id"]) for r in records]
    for r in records:
      assert r["label"] == shards["labels"][_record_index(r["id"])]
    skipped += state[tar_shards.STREAM_SKIPPED_KEY]
    truncated += state[tar_shards.STREAM_TRUNCATED_KEY]
  assert sorted(seen) == shards["readable"]  # each sample once, over both processes
  assert (skipped, truncated) == (shards["skipped"], 1)


def test_epochs_reshuffle_shards_and_repeat():
  first = tar_shards.shards_of_process(8, 0, seed=0, shard_index=0, shard_count=1)
  second = tar_shards.shards_of_process(8, 1, seed=0, shard_index=0, shard_count=1)
  assert sorted(first) == sorted(second) == list(range(8))
  assert list(first) != list(second)


def _loader(root, batch=4):
  stream = tar_shards.TarStream(root, seed=0, num_epochs=None)
  return pipeline.make_stream_loader(stream, [T.Decode(), T.RandomResizedCrop(16)], batch,
                                     seed=0, shard_index=0, shard_count=1)


def test_loader_drops_and_counts_corrupt_members(shards):
  iterator = iter(_loader(shards["root"]))
  ids = []
  for _ in range(len(shards["readable"]) // 4):  # one epoch
    batch = next(iterator)
    assert batch["image"].shape == (4, 16, 16, 3)
    ids += [_record_index(i) for i in batch["id"]]
  assert shards["bad_image"] not in ids
  assert pipeline.bad_records(iterator) == shards["skipped"] + 1  # + the undecodable image


def test_resume_continues_with_identical_batches(shards):
  iterator = iter(_loader(shards["root"]))
  for _ in range(5):  # past the corrupt members and into the next epoch's shards
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # the checkpoint stores JSON
  expected = [next(iterator) for _ in range(6)]
  resumed = iter(_loader(shards["root"]))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["id"], want["id"])
    np.testing.assert_array_equal(got["image"], want["image"])
  assert pipeline.bad_records(resumed) == pipeline.bad_records(iterator)


def test_builder_streams_tar_shards(shards):
  from kt_jax import config_defaults
  from kt_jax.data import builder
  from kt_jax.errors import UserError
  config = config_defaults.training_config()
  config.data.source, config.data.path = "tar_shards", shards["root"]
  config.batch_size, config.image_size = 4, 16
  config.data.augment.randaugment = ""
  builder.validate(config)
  stream, steps = builder.build_train_stream(config)
  assert steps == PER_SHARD * len(shards["shards"]) // 4
  assert next(stream)["image"].shape == (4, 16, 16, 3)
  assert len(stream.source) == len(shards["readable"])  # the peek holds the bad image as bytes
  stream.set_state(stream.get_state())
  config.data.workers = 2
  with pytest.raises(UserError, match="tar_shards"):
    builder.validate(config)
