"""A workdir holds one run. Rerunning there with another stage or other values is an error
that names what differs, never a silent skip of a finished run or a resume of another one.

The reference is the workdir's `config.json` (written by `stages.run` at each start), else the
stage named in its `summary.json`. Only keys that cannot change what a run computes may differ
(`RESULT_NEUTRAL_KEYS`); with those changed a finished stage is skipped and an unfinished one
resumes, as with the same config.
"""
import json

from etils import epath
from kt_jax import paths
from kt_jax.errors import UserError

# Dotted keys (matched anywhere in a key's path, so they hold inside pipelines too:
# "stages.proteus.log_every_steps") that cannot change parameters, losses or final scores.
RESULT_NEUTRAL_KEYS = (
    "log_every_steps",          # how often metrics are written
    "eval_every_steps",         # intermediate evaluations; the final one always runs
    "checkpoint_every_steps",   # a resumed run is bit-identical from any checkpoint
    "keep_checkpoints",
    "async_checkpoints",
    "stop_after_steps",         # ending an invocation early: how a long run is resumed
    "stop_after_shards",        # the same for the embed stage
    "stop_after_batches",       # the same for the digg_generate stage
    "log_sample_ids",
    "eval.batch_size",          # inference batching: memory, not results
    "mesh",                     # placement over devices; 1 and 8 devices agree (tested)
    "sharding_rules",
)
# Keys added to a stage's schema after runs existed, with the value that reproduces what those
# runs did: a saved config.json without the key ran exactly so, and still matches it. (Matched
# at the end of a key's path, so they hold inside pipelines too.)
ADDED_KEYS = {
    "optimizer.name": "adamw", "optimizer.momentum": 0.9, "optimizer.nesterov": False,
    "optimizer.schedule": "cosine", "optimizer.decay_boundaries": [0.3, 0.6, 0.9],
    "optimizer.decay_factor": 0.1, "data.train_images": "",
    "data.augment.ratio": [3 / 4, 4 / 3], "student.path": "",
    "head.skip_stride": 0, "eval.mask_size": 0,
    "finetune.class_weights": "none",
}
# Not neutral, though they look it: `data.workers` (the saved data-iterator position depends
# on the worker count), `total_steps`/`epochs` (the learning-rate schedule), `batch_size`.


class WorkdirMismatchError(UserError):
  """The workdir holds another run; the message (one line) names the differing keys."""


def _flatten(node, prefix: str = "") -> dict:
  if isinstance(node, dict):
    out = {}
    for key, value in node.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: node}


def is_result_neutral(key: str) -> bool:
  parts = key.split(".")
  for neutral in RESULT_NEUTRAL_KEYS:
    n = neutral.split(".")
    if any(parts[i:i + len(n)] == n for i in range(len(parts) - len(n) + 1)):
      return True
  return False


_UNSET = "(unset)"


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(dotted key, old, new) for every value that differs and may not, sorted by key."""
  old, new = _flatten(old), _flatten(new)
  return [(k, old.get(k, _UNSET), new.get(k, _UNSET)) for k in sorted(set(old) | set(new))
          if old.get(k, _UNSET) != new.get(k, _UNSET) and not is_result_neutral(k)
          and not (k not in old and _added_with_old_value(k, new[k]))]


def _added_with_old_value(key: str, value) -> bool:
  return any((key == added or key.endswith("." + added)) and value == old_value
             for added, old_value in ADDED_KEYS.items())


def _without_pipeline_growth(diffs, saved: dict, order: list) -> list:
  """A pipeline may grow: stages added (anywhere in `order`, the old ones keeping their
  relative order) run on a rerun, finished ones are skipped. Each stage's own workdir is
  guarded by its own config, so a changed stage is still an error there."""
  old_stages = set((saved.get("stages") or {}).keys())
  old_order = list(saved.get("order") or [])
  kept = [name for name in order if name in old_stages]
  if kept != old_order:
    return diffs
  added = lambda key: key.startswith("stages.") and key.split(".")[1] not in old_stages
  return [d for d in diffs if d[0] != "order" and not added(d[0])]


def pipeline_grew(config, workdir) -> bool:
  """Whether `config` is a pipeline with stages its workdir's run did not have."""
  if config.stage != "pipeline":
    return False
  saved = _read_json(paths.as_path(workdir) / "config.json") or {}
  return bool(set(config.order) - set(saved.get("order") or ()))


def _read_json(path: epath.Path) -> dict | None:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    return None


def check(config, workdir) -> None:
  """Raises WorkdirMismatchError unless `config` may run (resume, or be skipped) in `workdir`."""
  root = paths.as_path(workdir)  # local or a cloud URL (gs://...)
  workdir = str(epath.Path(paths.normalise(workdir)))  # for messages: the path as given
  saved = _read_json(root / "config.json")
  summary = _read_json(root / "summary.json")
  saved_stage = (saved or {}).get("stage") or (summary or {}).get("stage")
  state = "a finished" if summary is not None else "an unfinished"
  advice = "Use another --workdir, or delete this one to redo it."
  if saved_stage and saved_stage != config.stage:
    raise WorkdirMismatchError(
        f"{workdir} holds {state} {saved_stage!r} run; this config is stage {config.stage!r}. "
        + advice)
  if saved is None:
    return
  diffs = differences(saved, json.loads(config.to_json_best_effort()))
  if config.stage == "pipeline":
    diffs = _without_pipeline_growth(diffs, saved, list(config.order))
  if diffs:
    shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs[:8])
    more = f"; and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise WorkdirMismatchError(
        f"{workdir} holds {state} run of another config ({paths.join(workdir, 'config.json')}): "
        f"{shown}{more}. {advice} Only {', '.join(RESULT_NEUTRAL_KEYS)} may change.")
