"""The `frozen_eval` stage: how good are a frozen model's features on labelled tasks?

Extracts features of the train and test images, reports DINO's weighted kNN and a logistic
regression linear probe, and draws a contact sheet of nearest neighbours per task. This is
the default `make demo` job on the images and teacher that ship in packages.
"""
import json
import os

from absl import logging

from kt_jax import convert, sharding
from kt_jax.eval import evaluators


def format_table(rows: list[dict]) -> str:
  lines = [f"{'task':<14}{'classes':>8}{'train':>7}{'test':>6}{'kNN top-1':>11}"
           f"{'linear top-1':>14}"]
  for r in rows:
    lines.append(f"{r['task']:<14}{r['classes']:>8}{r['train']:>7}{r['test']:>6}"
                 f"{100 * r['knn_top1']:>10.1f}%{100 * r['linear_probe_top1']:>13.1f}%")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  mesh = sharding.make_mesh(config.mesh.to_dict())
  module, variables = convert.load_pretrained(config.teacher)
  spec = convert.input_spec(config.teacher, config.get("image_size", 0))
  logging.info("Model %s (%s) at %d px on mesh %s", config.teacher, type(module).__name__,
               spec.image_size, dict(mesh.shape))
  evaluator = evaluators.KnnLinearProbe(
      evaluators.build_tasks(config), config.batch_size, config.knn.k, config.knn.temperature,
      config.feature, config.seed, mesh)
  results = []
  for task in evaluator.tasks:
    scores = evaluator.score(task, module, variables, spec, config.teacher)
    sheet = evaluators.neighbour_sheet(scores, os.path.join(workdir, f"neighbours_{task.name}.png"),
                                       config.contact_sheet_rows, config.contact_sheet_k)
    results.append({"task": task.name, "classes": task.num_classes,
                    "train": len(task.train_labels), "test": len(task.test_labels),
                    "knn_top1": scores.knn_top1, "linear_probe_top1": scores.linear_probe_top1,
                    "linear_probe_C": scores.linear_probe_C, "contact_sheet": sheet})
  print(f"\nFrozen {config.teacher} features ({config.feature}) at {spec.image_size} px:\n"
        f"{format_table(results)}\nContact sheets: "
        f"{', '.join(r['contact_sheet'] for r in results)}")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return {"model": config.teacher, "results": results}
