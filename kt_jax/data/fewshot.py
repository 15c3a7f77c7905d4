"""Few-shot splits of a labelled task: N labels per class for training, a validation split cut
from those labelled images only, and the task's held-out test split, only ever reported.

A task (`data.task` of the `finetune` stage) is one of:

  "mnist"               the shipped digits: test = the held-out digits of the `mnist` eval task
                        (same labels_per_class, test_per_class and seed draw the same test
                        digits); the labelled pool is every other digit
  "photos"              crops of the shipped photos: pool = left-half crops, test = right half
  "folder:PATH"         PATH/train/<class>/* (the pool) and PATH/test/ (or val/, validation/)
  "NAME=folder:PATH"    the same under another name
  a registered name     any task a module registers with `register_task` (segmentation tasks
                        yield records with an (H, W) "mask", ignore label 255)

From the pool, `sample_per_class` draws `labels_per_class` records of every class with the
split seed (a class with fewer is an error naming it); `val_per_class` of them per class are
kept for validation (model and hyper-parameter selection), the rest train. The chosen ids are
written to `<workdir>/splits.json`.
"""
import dataclasses
import json
from typing import Any, Callable

import numpy as np

from kt_jax import paths
from kt_jax.data import shipped, sources
from kt_jax.errors import UserError

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
SPLITS_FILE = "splits.json"


@dataclasses.dataclass(frozen=True)
class LabelledPool:
  """A task before sampling: the labelled train source (records carry "label"; segmentation
  records also "mask", their "label" being the class to stratify by), which of its indices
  may be drawn, and the held-out test source."""
  name: str
  train: Any
  train_labels: np.ndarray          # per record of `train`, the class to sample by
  test: Any
  class_names: tuple[str, ...]
  kind: str = CLASSIFICATION
  candidates: np.ndarray | None = None  # indices of `train` that may be drawn (None: all)
  ignore_index: int = 255
  # Names of the classes `train_labels` count, when they are not the model's classes (a
  # segmentation image sampled by the digit it shows, its pixels labelled digit or
  # background); None: `class_names`.
  strata: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Splits:
  name: str
  kind: str
  train: Any
  val: Any | None
  test: Any
  class_names: tuple[str, ...]
  train_ids: np.ndarray
  val_ids: np.ndarray
  test_ids: np.ndarray
  ignore_index: int = 255

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def record(self) -> dict:
    return {"task": self.name, "kind": self.kind, "class_names": list(self.class_names),
            "train_ids": [int(i) for i in self.train_ids],
            "val_ids": [int(i) for i in self.val_ids],
            "test_ids": [int(i) for i in self.test_ids]}


class InMemorySegmentationSource:
  """uint8 images (N, H, W, 3) with (N, H, W) label masks; `labels` (N,) is the class each
  image is sampled by (e.g. the digit it shows)."""

  def __init__(self, images, masks, labels):
    if not len(images) == len(masks) == len(labels):
      raise ValueError(f"{len(images)} images, {len(masks)} masks, {len(labels)} labels.")
    self.images, self.masks = images, masks
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int):
    index = int(index)
    return {"image": np.asarray(self.images[index]), "mask": np.asarray(self.masks[index]),
            "label": int(self.labels[index]), "id": index}

  def describe(self, index: int) -> str:
    return f"in-memory segmentation image {int(index)}"


# name -> (builder(options: dict, seed: int) -> LabelledPool, kind)
_TASKS: dict[str, tuple[Callable[[dict, int], LabelledPool], str]] = {}


def register_task(name: str, builder: Callable[[dict, int], LabelledPool],
                  kind: str = CLASSIFICATION) -> None:
  _TASKS[name] = (builder, kind)


def _mnist(options: dict, seed: int) -> LabelledPool:
  digits, labels = shipped.mnist_digits()
  _, test = shipped.mnist_fewshot_indices(options.get("labels_per_class", 10),
                                          options.get("test_per_class", 50), seed)
  source = sources.InMemorySource(np.repeat(digits[..., None], 3, axis=-1), labels)
  pool = np.setdiff1d(np.arange(len(digits)), test)
  return LabelledPool("mnist", source, labels, sources.SubsetSource(source, np.sort(test)),
                      tuple(str(i) for i in range(10)), candidates=pool)


def _photos(options: dict, seed: int) -> LabelledPool:
  n, size = options.get("crops_per_photo", 24), options.get("crop_size", 96)
  tr_x, tr_y, names = shipped.photo_crops(n, size, seed, split="train")
  te_x, te_y, _ = shipped.photo_crops(n, size, seed + 1, split="test")
  return LabelledPool("photos", sources.InMemorySource(tr_x, tr_y), tr_y,
                      sources.InMemorySource(te_x, te_y), tuple(names))


register_task("mnist", _mnist)
register_task("photos", _photos)


def task_kind(entry: str) -> str:
  """classification or segmentation, without building the task."""
  name = str(entry).partition("=")[2] if "=" in str(entry) else str(entry)
  if name.startswith("folder:"):
    return CLASSIFICATION
  if entry not in _TASKS:
    raise UserError(f"data.task={entry!r} is not a known task: {', '.join(sorted(_TASKS))} or "
                    "folder:PATH (PATH/train/<class>/*, PATH/test/<class>/*).")
  return _TASKS[entry][1]


def _folder_spec(entry: str):
  from kt_jax.data import tasks
  spec = tasks.parse(entry)
  if spec.kind != "folder":
    raise UserError(f"data.task={entry!r}: finetuning reads folder:PATH tasks (or a shipped "
                    "or registered one), not " + spec.kind)
  return spec


def folder_class_counts(path: str) -> dict[str, int]:
  """Images per class of PATH/train/ (a directory listing, no decoding)."""
  listed = sources.list_image_folder(paths.join(path, "train"))
  files, labels, names = listed[0], np.asarray(listed[1], np.int64), listed[2]
  del files
  return {name: int(np.sum(labels == i)) for i, name in enumerate(names)}


def check(entry: str, labels_per_class: int, val_per_class: int) -> None:
  """Before any compute: the task exists, and a folder has enough images in every class."""
  if labels_per_class < 0 or val_per_class < 0:
    raise UserError("data.labels_per_class and data.val_per_class must be >= 0.")
  if labels_per_class and val_per_class >= labels_per_class:
    raise UserError(f"data.val_per_class={val_per_class} leaves no training image of "
                    f"data.labels_per_class={labels_per_class}.")
  task_kind(entry)
  if entry in _TASKS:
    return
  spec = _folder_spec(entry)
  if not paths.isdir(paths.join(spec.path, "train")):
    raise UserError(f"data.task={entry!r}: no folder {paths.join(spec.path, 'train')} "
                    "(expected PATH/train/<class>/* and PATH/test/<class>/*).")
  counts = folder_class_counts(spec.path)
  if not counts:
    raise UserError(f"data.task={entry!r}: {paths.join(spec.path, 'train')} has no class "
                    "subfolders.")
  need = labels_per_class or val_per_class + 1
  short = {c: n for c, n in counts.items() if n < need}
  if short:
    name, n = min(short.items(), key=lambda kv: kv[1])
    raise UserError(f"data.task={entry!r}: class {name!r} has {n} image(s) in train/, fewer "
                    f"than data.labels_per_class={need}"
                    + (f" (also short: {', '.join(sorted(set(short) - {name}))})"
                       if len(short) > 1 else "") + ".")


def build_pool(entry: str, options: dict | None = None, seed: int = 0) -> LabelledPool:
  options = dict(options or {})
  if entry in _TASKS:
    return _TASKS[entry][0](options, seed)
  from kt_jax.data import tasks
  spec = _folder_spec(entry)
  task = tasks.build(entry)
  return LabelledPool(spec.name, task.train_source, np.asarray(task.train_source.labels),
                      task.test_source, tuple(task.class_names))


def sample_per_class(labels, n: int, seed: int, class_names=None, candidates=None) -> list:
  """For every class c (in order), `n` indices drawn without replacement from the candidates
  labelled c, in the order a seeded permutation gives; a class with fewer is an error naming
  it. Returns one index array per class."""
  labels = np.asarray(labels)
  candidates = np.arange(len(labels)) if candidates is None else np.asarray(candidates)
  class_names = class_names or tuple(str(c) for c in range(int(labels.max(initial=-1)) + 1))
  rng = np.random.default_rng(seed)
  chosen = []
  for c, name in enumerate(class_names):
    members = candidates[labels[candidates] == c]
    if len(members) < n:
      raise UserError(f"class {name!r} has {len(members)} labelled image(s), fewer than "
                      f"data.labels_per_class={n}.")
    chosen.append(rng.permutation(members)[:n])
  return chosen


def make_splits(pool: LabelledPool, labels_per_class: int, val_per_class: int,
                seed: int) -> Splits:
  """Draws the few-shot train and validation splits (labels_per_class 0: every candidate)."""
  candidates = (np.arange(len(pool.train_labels)) if pool.candidates is None
                else np.asarray(pool.candidates))
  strata = pool.strata or pool.class_names
  n = labels_per_class or int(np.bincount(pool.train_labels[candidates],
                                          minlength=len(strata)).min())
  per_class = sample_per_class(pool.train_labels, n, seed, strata, candidates)
  val_ids = np.sort(np.concatenate([c[:val_per_class] for c in per_class]))
  train_ids = np.sort(np.concatenate([c[val_per_class:] for c in per_class]))
  # Test ids in the train source's numbering when the test split is cut from the same source
  # (mnist), else the test source's own indices.
  shared = isinstance(pool.test, sources.SubsetSource) and pool.test.parent is pool.train
  test_ids = np.asarray(pool.test.indices) if shared else np.arange(len(pool.test))
  val = sources.SubsetSource(pool.train, val_ids) if len(val_ids) else None
  return Splits(pool.name, pool.kind, sources.SubsetSource(pool.train, train_ids), val,
                pool.test, pool.class_names, train_ids, val_ids, test_ids, pool.ignore_index)


def build_splits(data_cfg, seed: int) -> Splits:
  """The splits `data_cfg` (a finetune config's `data`) asks for; their kind follows the
  task's registration."""
  options = dict(data_cfg.get("task_options", {}).get(_option_key(data_cfg.task), {}) or {})
  # mnist's test digits are the `mnist` eval task's for the same labels_per_class and seed.
  options.setdefault("labels_per_class", data_cfg.labels_per_class or 10)
  pool = build_pool(data_cfg.task, options, seed)
  pool = dataclasses.replace(pool, kind=task_kind(data_cfg.task))
  return make_splits(pool, data_cfg.labels_per_class, data_cfg.val_per_class, seed)


def _option_key(entry: str) -> str:
  return entry if entry in _TASKS else "folder"


def write_record(workdir: str, splits: Splits, extra: dict | None = None) -> str:
  path = paths.join(workdir, SPLITS_FILE)
  paths.write_text(path, json.dumps({**splits.record(), **(extra or {})}, indent=1))
  return path


from kt_jax.data import digit_segmentation  # noqa: E402  (registers the digit_seg task)
digit_segmentation.register()
