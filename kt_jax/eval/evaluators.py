"""Evaluators: small objects that score a (module, variables) pair on labelled tasks.

The trainer calls them every `eval_every_steps` and at the end on the student, and once per
run on the teacher; the `frozen_eval` stage calls them on any model.
"""
import dataclasses
from typing import Any, Sequence

import numpy as np

from kt_jax.data import tasks as tasks_lib
from kt_jax.eval import contact_sheet, features, knn, linear_probe
from kt_jax.models.registry import InputSpec


@dataclasses.dataclass
class TaskScores:
  task: Any  # tasks_lib.LabelledTask (in memory) or tasks_lib.SourceTask (on disk)
  knn_top1: float
  linear_probe_top1: float
  linear_probe_C: float | None  # sklearn's chosen C; None when the optax probe ran
  train_features: np.ndarray
  test_features: np.ndarray
  train_labels: np.ndarray = None  # the rows scored (undecodable images left out)
  test_labels: np.ndarray = None
  train_ids: np.ndarray = None     # source index of each row
  test_ids: np.ndarray = None
  bad_records: int = 0
  probe: dict = dataclasses.field(default_factory=dict)

  def as_dict(self, prefix: str = "") -> dict:
    name = f"{prefix}{self.task.name}"
    return {f"{name}/knn_top1": self.knn_top1, f"{name}/linear_probe_top1": self.linear_probe_top1}


@dataclasses.dataclass
class KnnLinearProbe:
  """DINO's weighted kNN (cosine, k, temperature) and a logistic-regression linear probe on
  frozen features (the CLS token by default, as SynCLR/Proteus do; `mean_patchtoken` or
  both concatenated, DINOv2's linear-head input, as options)."""
  tasks: Sequence[tasks_lib.LabelledTask]
  batch_size: int = 64
  k: int = 20
  temperature: float = 0.07
  feature: str = "x_norm_clstoken"  # or "mean_patchtoken", or "cls+mean_patch"
  seed: int = 0
  mesh: object = None
  probe: str = "auto"  # linear probe: "auto" (sklearn up to SKLEARN_MAX_ROWS rows), "sklearn",
                       # "optax"
  workers: int = 0     # grain worker processes decoding a task on disk

  def _select(self, out):
    if self.feature == "cls+mean_patch":
      return np.concatenate([out["x_norm_clstoken"], out["mean_patchtoken"]], axis=1)
    return out[self.feature]

  def _split(self, task, split, module, variables, spec, desc):
    """(features, labels, ids, bad records) of one split of an in-memory or on-disk task."""
    keys = ("x_norm_clstoken",)
    if isinstance(task, tasks_lib.LabelledTask):
      images, labels = getattr(task, f"{split}_images"), getattr(task, f"{split}_labels")
      out = features.extract_features(module, variables, images, spec, self.batch_size, keys,
                                      mesh=self.mesh, desc=desc)
      return self._select(out), np.asarray(labels), np.arange(len(labels)), 0
    out = features.extract_source_features(module, variables, getattr(task, f"{split}_source"),
                                           spec, self.batch_size, keys, mesh=self.mesh,
                                           desc=desc, workers=self.workers)
    return self._select(out), out["label"], out["id"], out["bad_records"]

  def score(self, task, module, variables, spec: InputSpec, name: str = "model") -> TaskScores:
    train, train_y, train_ids, bad_train = self._split(task, "train", module, variables, spec,
                                                       f"{name} {task.name} train")
    test, test_y, test_ids, bad_test = self._split(task, "test", module, variables, spec,
                                                   f"{name} {task.name} test")
    knn_top1 = knn.knn_accuracy(train, train_y, test, test_y, task.num_classes, k=self.k,
                                temperature=self.temperature, mesh=self.mesh)
    probe = linear_probe.probe(train, train_y, test, test_y, task.num_classes, seed=self.seed,
                               method=self.probe, mesh=self.mesh)
    return TaskScores(task, knn_top1, probe["accuracy"], probe.get("C"), train, test, train_y,
                      test_y, train_ids, test_ids, bad_train + bad_test, probe)

  def __call__(self, module, variables, spec: InputSpec, prefix: str = "") -> dict:
    out = {}
    for task in self.tasks:
      out.update(self.score(task, module, variables, spec, prefix.rstrip("/") or "model")
                 .as_dict(prefix))
    return out


class _Images:
  """Images of one split by feature row: in-memory arrays, or decoded from a task's source."""

  def __init__(self, task, split: str, ids):
    self.task, self.split, self.ids = task, split, ids

  def __getitem__(self, row):
    if isinstance(self.task, tasks_lib.LabelledTask):
      return getattr(self.task, f"{self.split}_images")[self.ids[row]]
    from kt_jax.data import transforms  # pylint: disable=g-import-not-at-top
    record = getattr(self.task, f"{self.split}_source")[int(self.ids[row])]
    image = transforms.decode_image(record["image"])
    return transforms.ResizeCenterCrop(96, 1.0).apply(image)  # cells are small


def neighbour_sheet(scores: TaskScores, path: str, rows: int = 8, k: int = 6) -> str:
  """A contact sheet of test queries and their nearest training images by feature."""
  task = scores.task
  test_labels = _or(scores.test_labels, getattr(task, "test_labels", None))
  train_labels = _or(scores.train_labels, getattr(task, "train_labels", None))
  test_ids = _or(scores.test_ids, np.arange(len(test_labels)))
  train_ids = _or(scores.train_ids, np.arange(len(train_labels)))
  rows = min(rows, len(test_labels))
  query = np.linspace(0, len(test_labels) - 1, rows).astype(int)
  neighbours, _ = knn.nearest_neighbours(scores.test_features[query], scores.train_features, k=k)
  queries = _Images(task, "test", test_ids[query])
  return contact_sheet.save_neighbour_sheet(
      [queries[i] for i in range(rows)], _Images(task, "train", train_ids),
      np.asarray(neighbours), path, query_labels=test_labels[query], bank_labels=train_labels,
      class_names=task.class_names)


def _or(value, default):
  return default if value is None else value


def check_tasks(config) -> None:
  """Before any compute: every `config.tasks` entry parses, its packages are installed (else
  one line naming the pip extra) and its folder exists."""
  for entry in config.get("tasks", ()):
    tasks_lib.check(entry)


def build_tasks(config) -> list:
  options = config.get("task_options", {})
  built = []
  for entry in config.tasks:
    spec = tasks_lib.parse(entry)
    built.append(tasks_lib.build(entry, options.get(spec.name, {}), seed=config.seed))
  return built
