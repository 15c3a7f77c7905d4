"""The embed stage on tar shards of shipped photos: crops, unit vectors, resume after a kill."""
import numpy as np
import pytest
import tiny_embedder

from kt_jax import config_defaults, stages
from kt_jax.data import shipped, tar_shards
from kt_jax.retrieval import crops, store


def gallery_images():
  """The 9 shipped colour photos, 72 px high, plus 6 of foolbox's ImageNet samples."""
  photos = [shipped.resize_images(p[None], (72, round(72 * p.shape[1] / p.shape[0])))[0]
            for p in shipped.colour_photos().values()]
  return photos + list(shipped.foolbox_images("imagenet", 64)[0][:6])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("gallery"))
  samples = [{"key": f"g{i:03d}", "image": image, "json": {"index": i}}
             for i, image in enumerate(gallery_images())]
  samples[4]["image"] = b"corrupt"
  tar_shards.write_shards(samples, root, per_shard=4, image_format="PNG")
  return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return tiny_embedder.save_tiny_vit(str(tmp_path_factory.mktemp("model") / "vit"))


def embed_config(gallery_path, model_path, **overrides):
  c = config_defaults.embed_config()
  c.teacher.path = model_path
  c.image_size, c.batch_size = 32, 8
  c.gallery.path = gallery_path
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def reference(gallery, model, tmp_path_factory):
  """An uninterrupted run: (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp("whole"))
  return workdir, stages.run(embed_config(gallery, model), workdir)


def test_crop_boxes():
  assert crops.boxes(grid=2).tolist() == [[0, 0, 1, 1], [0, 0, .5, .5], [0, .5, .5, 1],
                                          [.5, 0, 1, .5], [.5, .5, 1, 1]]
  np.testing.assert_allclose(crops.scale_boxes(0.5),
                             [(y, x, y + .5, x + .5) for y in (0, .25, .5) for x in (0, .25, .5)])
  image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
  np.testing.assert_array_equal(crops.cut(image, (0.5, 0.25, 1.0, 0.5)), image[5:10, 5:10])


def test_embed_writes_unit_vectors_per_crop(reference):
  workdir, summary = reference
  vectors, table = store.load(workdir + "/embeddings")
  images = len(gallery_images()) - 1  # the corrupt one is counted, not embedded
  assert (summary["images"], summary["bad_images"], summary["crops"]) == (images, 1, 5 * images)
  assert vectors.shape == (5 * images, 192)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  assert table["box"].tolist() == crops.boxes(grid=2).tolist() * images
  assert [m["index"] for m in table["meta"]] == [i for i in range(images + 1) if i != 4]
  assert summary["images_per_s_stage"] > 0 and summary["images_per_s_model"] > 0


def test_killed_embed_resumes_without_repeats(gallery, model, reference, tmp_path, monkeypatch):
  whole, reference = reference
  resumed = str(tmp_path / "resumed")
  first = stages.run(embed_config(gallery, model, stop_after_shards=1), resumed)
  assert first["completed"] is False and store.done(resumed + "/embeddings") == ["00000"]
  real_write, calls = store.write_shard, []

  def dies_on_second_write(*args):  # a kill in the middle of the second unit of this run
    calls.append(args[1])
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    real_write(*args)
  monkeypatch.setattr(store, "write_shard", dies_on_second_write)
  with pytest.raises(KeyboardInterrupt):
    stages.run(embed_config(gallery, model), resumed)
  monkeypatch.setattr(store, "write_shard", real_write)
  last = stages.run(embed_config(gallery, model), resumed)
  assert last["units_embedded"] == reference["units_embedded"] - 2  # none embedded twice
  want, want_table = store.load(whole + "/embeddings")
  got, got_table = store.load(resumed + "/embeddings")
  np.testing.assert_array_equal(got, want)
  assert got_table["key"] == want_table["key"]
  np.testing.assert_array_equal(got_table["image"], want_table["image"])
