"""The `frozen_eval` stage: how good are a frozen model's features on labelled tasks?

Extracts features of the train and test images, reports DINO's weighted kNN and a logistic
regression linear probe, and draws a contact sheet of nearest neighbours per task. This is
the default `make demo` job on the images and teacher that ship in packages.
"""
import json
import os

from absl import logging

from kt_jax import convert, sharding
from kt_jax.errors import UserError
from kt_jax.stages import checks


def format_table(rows: list[dict]) -> str:
  lines = [f"{'task':<14}{'classes':>8}{'train':>7}{'test':>6}{'kNN top-1':>11}"
           f"{'linear top-1':>14}"]
  for r in rows:
    lines.append(f"{r['task']:<14}{r['classes']:>8}{r['train']:>7}{r['test']:>6}"
                 f"{100 * r['knn_top1']:>10.1f}%{100 * r['linear_probe_top1']:>13.1f}%")
  return "\n".join(lines)


def validate(config) -> None:
  """What can be checked before the model is loaded: the model path and the eval section."""
  checks.check_teacher_path(config.teacher.path, "teacher.path")
  checks.check_eval(config.eval)
  checks.check_non_negative(config, "image_size")
  if not config.eval.tasks:
    raise UserError("frozen_eval needs at least one task, e.g. --config.eval.tasks=mnist "
                    "--config.eval.tasks=photos")


def load_model(config):
  """(module, variables, input spec) of the model whose features are scored."""
  module, variables = convert.load_pretrained(config.teacher.path)
  return module, variables, convert.input_spec(config.teacher.path, config.image_size)


def run(config, workdir: str) -> dict:
  from kt_jax.eval import evaluators  # sklearn, matplotlib: not needed by `validate`
  mesh = sharding.make_mesh(config.mesh.to_dict())
  path = config.teacher.path
  module, variables, spec = load_model(config)
  logging.info("Model %s (%s) at %d px on mesh %s", path, type(module).__name__,
               spec.image_size, dict(mesh.shape))
  ev = config.eval
  evaluator = evaluators.KnnLinearProbe(
      evaluators.build_tasks(ev), ev.batch_size, ev.knn_k, ev.knn_temperature, ev.feature,
      config.seed, mesh)
  results = []
  for task in evaluator.tasks:
    scores = evaluator.score(task, module, variables, spec, path)
    sheet = evaluators.neighbour_sheet(scores, os.path.join(workdir, f"neighbours_{task.name}.png"),
                                       config.contact_sheet.rows, config.contact_sheet.k)
    results.append({"task": task.name, "classes": task.num_classes,
                    "train": len(task.train_labels), "test": len(task.test_labels),
                    "knn_top1": scores.knn_top1, "linear_probe_top1": scores.linear_probe_top1,
                    "linear_probe_C": scores.linear_probe_C, "contact_sheet": sheet})
  print(f"\nFrozen {path} features ({ev.feature}) at {spec.image_size} px:\n"
        f"{format_table(results)}\nContact sheets: "
        f"{', '.join(r['contact_sheet'] for r in results)}")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return {"model": path, "results": results}
