"""The `frozen_eval` stage: how good are a frozen model's features on a labelled task?

Extracts features of the train and test images, reports DINO's weighted kNN and a logistic
regression linear probe on the class token, and draws a contact sheet of nearest neighbours.
This is the default `make demo` job on the images and teacher that ship in packages.
"""
import json
import os

import numpy as np
from absl import logging

from kt_jax import convert, sharding
from kt_jax.data import tasks
from kt_jax.eval import contact_sheet, features, knn, linear_probe
from kt_jax.models import registry


def model_input_spec(name: str, config) -> registry.InputSpec:
  """The shipped/registered model's own input spec, else the config's image size + ImageNet."""
  if name in registry.names():
    spec = registry.input_spec(name)
  else:
    spec = registry.InputSpec()
  if config.get("image_size"):
    spec = registry.InputSpec(config.image_size, spec.mean, spec.std)
  return spec


def evaluate_task(task: tasks.LabelledTask, module, variables, spec, config, mesh,
                  workdir: str, model_name: str) -> dict:
  extract = lambda images, split: features.extract_features(
      module, variables, images, spec, config.batch_size, mesh=mesh,
      desc=f"{model_name} {task.name} {split}")
  train = extract(task.train_images, "train")
  test = extract(task.test_images, "test")
  key = config.feature
  k, temperature = config.knn.k, config.knn.temperature
  result = {
      "task": task.name,
      "classes": task.num_classes,
      "train": len(task.train_labels),
      "test": len(task.test_labels),
      "knn_top1": knn.knn_accuracy(train[key], task.train_labels, test[key], task.test_labels,
                                   task.num_classes, k=k, temperature=temperature),
  }
  probe = linear_probe.linear_probe_accuracy(train[key], task.train_labels, test[key],
                                             task.test_labels, seed=config.seed)
  result["linear_probe_top1"] = probe["accuracy"]
  result["linear_probe_C"] = probe["C"]
  rows = min(config.contact_sheet_rows, len(task.test_labels))
  query = np.linspace(0, len(task.test_labels) - 1, rows).astype(int)
  neighbours, _ = knn.nearest_neighbours(test[key][query], train[key], k=config.contact_sheet_k)
  sheet = os.path.join(workdir, f"neighbours_{task.name}.png")
  contact_sheet.save_neighbour_sheet(task.test_images[query], task.train_images,
                                     np.asarray(neighbours), sheet,
                                     query_labels=task.test_labels[query],
                                     bank_labels=task.train_labels)
  result["contact_sheet"] = sheet
  return result


def run(config, workdir: str) -> dict:
  mesh = sharding.make_mesh(config.mesh.to_dict())
  module, variables = convert.load_pretrained(config.teacher)
  spec = model_input_spec(config.teacher, config)
  logging.info("Teacher %s (%s) at %d px on mesh %s", config.teacher, type(module).__name__,
               spec.image_size, dict(mesh.shape))
  results = []
  for name in config.tasks:
    task = tasks.build(name, config.task_options.get(name, {}), seed=config.seed)
    results.append(evaluate_task(task, module, variables, spec, config, mesh, workdir,
                                 config.teacher))
  lines = [f"{'task':<14}{'classes':>8}{'train':>7}{'test':>6}{'kNN top-1':>11}"
           f"{'linear top-1':>14}"]
  for r in results:
    lines.append(f"{r['task']:<14}{r['classes']:>8}{r['train']:>7}{r['test']:>6}"
                 f"{100 * r['knn_top1']:>10.1f}%{100 * r['linear_probe_top1']:>13.1f}%")
  table = "\n".join(lines)
  print(f"\nFrozen {config.teacher} features ({config.feature}):\n{table}\n"
        f"Contact sheets: {', '.join(r['contact_sheet'] for r in results)}")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return {"teacher": config.teacher, "results": results}
