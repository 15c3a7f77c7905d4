"""The `select` stage: the smallest honest sweep. A pipeline runs one stage per grid point
(e.g. finetunes at several learning rates); `select` reads their `summary.json`, keeps the one
with the highest `key` (the validation score: the test score is never looked at), and
  - links `<workdir>/model` to the winner's `model/`, so a later stage reads the chosen
    model as "{stage:NAME}/model" (its model.json still names the winner's workdir, so the
    report's pretraining compute follows it);
  - copies the winner's report row (from `candidates_report`, relative to the winner's
    workdir: the grid points write their rows into a sweep table of their own) into
    `report.dir` under `report.method`.
Writes `selection.json` (every candidate's value, the winner) and the summary.
"""
import json
import os

from kt_jax import paths
from kt_jax.errors import UserError
from kt_jax.stages import checks

SELECTION = "selection.json"


def validate(config) -> None:
  if not config.candidates or isinstance(config.candidates, str):
    raise UserError("config.candidates must list the workdirs to choose from, e.g. "
                    "('{stage:deliver_lr0}', '{stage:deliver_lr1}').")
  for path in config.candidates:
    if not checks.is_deferred(path) and not paths.exists(paths.join(path, "summary.json")):
      raise UserError(f"config.candidates: {path} holds no summary.json (not a finished stage).")
  if not config.key:
    raise UserError("Set --config.key to the summary value to maximise (e.g. val).")


def best(summaries: dict, key: str) -> str:
  """The name whose summary[key] is highest (the first on ties); one with none is skipped."""
  scored = {n: s.get(key) for n, s in summaries.items() if s.get(key) is not None}
  if not scored:
    raise UserError(f"No candidate's summary.json has a value for {key!r}.")
  return max(scored, key=lambda n: (scored[n], -list(summaries).index(n)))


def _report_dir(workdir: str, directory: str) -> str:
  if not paths.is_remote(directory) and not directory.startswith("/"):
    return paths.absolute(paths.join(workdir, directory))
  return directory


def run(config, workdir: str) -> dict:
  from kt_jax.eval import report
  summaries = {path: json.loads(paths.read_text(paths.join(path, "summary.json")))
               for path in config.candidates}
  winner = best(summaries, config.key)
  link = paths.join(workdir, "model")
  if os.path.lexists(link):
    os.remove(link)
  os.symlink(paths.join(paths.absolute(winner), "model"), link)
  selection = {"key": config.key, "chosen": winner,
               "values": {p: s.get(config.key) for p, s in summaries.items()}}
  paths.write_text(paths.join(workdir, SELECTION), json.dumps(selection, indent=1))
  if config.report.dir:
    rows = [r for r in report.read_rows(_report_dir(winner, config.candidates_report))
            if r.get("workdir") == paths.absolute(winner)]
    if not rows:
      raise UserError(f"The chosen {winner} has no row in its report "
                      f"({config.candidates_report}).")
    row = dict(rows[-1], method=config.report.method or rows[-1]["method"],
               workdir=paths.absolute(workdir), chosen=paths.absolute(winner))
    report.append_row(_report_dir(workdir, config.report.dir), row)
  chosen = summaries[winner]
  print(f"\nselect: {winner} ({config.key} {chosen.get(config.key)}) of "
        f"{len(summaries)} candidates")
  return {"chosen": winner, "key": config.key, "value": chosen.get(config.key),
          "val": chosen.get("val"), "test": chosen.get("test"),
          "candidates": selection["values"]}
