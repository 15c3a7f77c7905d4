"""Evaluators: small objects that score a (module, variables) pair on labelled tasks.

The trainer calls them every `eval_every_steps` and at the end on the student, and once per
run on the teacher; the `frozen_eval` stage calls them on any model.
"""
import dataclasses
from typing import Sequence

import numpy as np

from kt_jax.data import tasks as tasks_lib
from kt_jax.eval import contact_sheet, features, knn, linear_probe
from kt_jax.models.registry import InputSpec


@dataclasses.dataclass
class TaskScores:
  task: tasks_lib.LabelledTask
  knn_top1: float
  linear_probe_top1: float
  linear_probe_C: float
  train_features: np.ndarray
  test_features: np.ndarray

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

  def _features(self, module, variables, images, spec, desc):
    keys = ("x_norm_clstoken",)
    out = features.extract_features(module, variables, images, spec, self.batch_size, keys,
                                    mesh=self.mesh, desc=desc)
    if self.feature == "cls+mean_patch":
      return np.concatenate([out["x_norm_clstoken"], out["mean_patchtoken"]], axis=1)
    return out[self.feature]

  def score(self, task, module, variables, spec: InputSpec, name: str = "model") -> TaskScores:
    train = self._features(module, variables, task.train_images, spec, f"{name} {task.name} train")
    test = self._features(module, variables, task.test_images, spec, f"{name} {task.name} test")
    knn_top1 = knn.knn_accuracy(train, task.train_labels, test, task.test_labels,
                                task.num_classes, k=self.k, temperature=self.temperature)
    probe = linear_probe.linear_probe_accuracy(train, task.train_labels, test,
                                               task.test_labels, seed=self.seed)
    return TaskScores(task, knn_top1, probe["accuracy"], probe["C"], train, test)

  def __call__(self, module, variables, spec: InputSpec, prefix: str = "") -> dict:
    out = {}
    for task in self.tasks:
      out.update(self.score(task, module, variables, spec, prefix.rstrip("/") or "model")
                 .as_dict(prefix))
    return out


def neighbour_sheet(scores: TaskScores, path: str, rows: int = 8, k: int = 6) -> str:
  """A contact sheet of test queries and their nearest training images by feature."""
  task = scores.task
  rows = min(rows, len(task.test_labels))
  query = np.linspace(0, len(task.test_labels) - 1, rows).astype(int)
  neighbours, _ = knn.nearest_neighbours(scores.test_features[query], scores.train_features, k=k)
  return contact_sheet.save_neighbour_sheet(
      task.test_images[query], task.train_images, np.asarray(neighbours), path,
      query_labels=task.test_labels[query], bank_labels=task.train_labels,
      class_names=task.class_names)


def build_tasks(config) -> list[tasks_lib.LabelledTask]:
  options = config.get("task_options", {})
  return [tasks_lib.build(name, options.get(name, {}), seed=config.seed) for name in config.tasks]
