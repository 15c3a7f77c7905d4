"""Retrieval on real images: embed tar shards of shipped photos, index, retrieve a balanced
transfer set, read it back through grain as crops."""
import os
import tarfile

import numpy as np
import pytest
import tiny_embedder
from PIL import Image

from kt_jax import config_defaults, stages
from kt_jax.data import pipeline, shipped, tar_shards
from kt_jax.data import transforms as T
from kt_jax.retrieval import crops, index, manifest, store
from kt_jax.retrieval.embedder import Embedder

PHOTOS = list(shipped.SKIMAGE_PHOTOS + shipped.SKLEARN_PHOTOS)


def small(photo, height=72):
  return shipped.resize_images(photo[None], (height, round(height * photo.shape[1] /
                                                          photo.shape[0])))[0]


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
  """Gallery shards (9 photos + 6 foolbox ImageNet images), a query folder of 2 classes, and
  the embed, index and retrieve stages run on them."""
  root = tmp_path_factory.mktemp("retrieval")
  photos = shipped.colour_photos()
  gallery = [small(p) for p in photos.values()] + list(shipped.foolbox_images("imagenet",
                                                                              64)[0][:6])
  tar_shards.write_shards([{"key": f"g{i:03d}", "image": im, "json": {"index": i}}
                           for i, im in enumerate(gallery)], str(root / "gallery"), 5, "PNG")
  for name in ("chelsea", "coffee"):  # queries: two crops of each photo's full resolution
    os.makedirs(root / "queries" / name)
    photo = photos[name]
    for j, box in enumerate([(0, 0, .6, .6), (.4, .4, 1, 1)]):
      Image.fromarray(crops.cut(photo, box)).save(root / "queries" / name / f"{j}.png")
  model = tiny_embedder.save_tiny_vit(str(root / "model"))
  embed = config_defaults.embed_config()
  embed.teacher.path, embed.image_size, embed.batch_size = model, 32, 16
  embed.gallery.path = str(root / "gallery")
  retrieve = config_defaults.retrieve_config()
  retrieve.queries.source, retrieve.queries.path = "image_folder", str(root / "queries")
  retrieve.embeddings, retrieve.index = "{stage:embed}", "{stage:index}"
  retrieve.quota, retrieve.duplicate_threshold = 3, 1.0  # random weights: every crop ~alike
  retrieve.contact_sheet.rows, retrieve.contact_sheet.k = 4, 3
  flat = config_defaults.index_config()
  flat.embeddings = "{stage:embed}"
  config = config_defaults.ml_collections.ConfigDict({
      "stage": "pipeline", "order": ("embed", "index", "retrieve"),
      "stages": {"embed": embed, "index": flat, "retrieve": retrieve}})
  summary = stages.run(config, str(root / "run"))
  return {"root": root, "model": model, "summary": summary["stages"], "run": root / "run",
          "gallery": gallery}


def test_crop_of_a_shipped_photo_is_retrieved_top1(pipeline_dirs):
  vectors, table = store.load(str(pipeline_dirs["run"] / "embed" / "embeddings"))
  faiss_index = index.load(str(pipeline_dirs["run"] / "index" / "index.faiss"))
  from kt_jax import convert
  module, variables = convert.load_pretrained(pipeline_dirs["model"])
  embed = Embedder(module, variables, convert.input_spec(pipeline_dirs["model"], 32))
  photos = shipped.colour_photos()
  for name, box in (("astronaut", (0, .5, .5, 1)), ("rocket", (.5, 0, 1, .5))):
    query = crops.cut_resized(photos[name], np.asarray([box]), 32)  # from the full-size photo
    _, ids = index.search(faiss_index, embed(query), 1)
    crop = ids[0, 0]
    assert table["key"][table["image"][crop]] == f"g{PHOTOS.index(name):03d}"
    np.testing.assert_allclose(table["box"][crop], box)


def test_quota_exact_and_no_image_twice(pipeline_dirs):
  summary = pipeline_dirs["summary"]["retrieve"]
  rows = manifest.read(str(pipeline_dirs["run"] / "retrieve"))
  assert summary["queries"] == 4 and len(rows) == 4 * 3
  assert np.bincount([r["query"] for r in rows]).tolist() == [3, 3, 3, 3]
  assert len({(r["source"], r["key"]) for r in rows}) == len(rows)
  assert os.path.getsize(summary["contact_sheet"]) > 0
  assert set(summary["phase_seconds"]) >= {"embed_queries", "search", "select"}


def test_manifest_loads_through_grain_as_crops(pipeline_dirs):
  path = str(pipeline_dirs["run"] / "retrieve")
  source = manifest.ManifestSource(path)
  row = source.rows[0]
  with tarfile.open(row["source"]) as tar:  # the original file, found by name, not offset
    data = tar.extractfile(f"{row['key']}.png").read()
  expected = crops.cut(T.decode_image(data), row["box"])
  np.testing.assert_array_equal(source[0]["image"], expected)
  loader = pipeline.make_eval_loader(source, [T.Decode(), T.ResizeCenterCrop(16, 1.0)],
                                     global_batch_size=4, shard_index=0, shard_count=1)
  batches = list(loader)
  assert sum(int(b["valid"].sum()) for b in batches) == len(source)
  assert batches[0]["image"].shape == (4, 16, 16, 3)
  from kt_jax.data import builder
  config = config_defaults.training_config()
  config.data.source, config.data.path = "manifest", os.path.join(path, manifest.MANIFEST)
  config.batch_size, config.image_size, config.data.augment.randaugment = 4, 16, ""
  builder.validate(config)
  stream, _ = builder.build_train_stream(config)
  assert next(stream)["image"].shape == (4, 16, 16, 3)


def test_rerun_skips_finished_stages(pipeline_dirs):
  for name in ("embed", "index", "retrieve"):
    assert (pipeline_dirs["run"] / name / "summary.json").exists()
