"""Stages a config can name, and the one function that runs them.

A stage is an importable function `fn(config, workdir) -> dict` (its summary). Each writes
only inside its workdir; a finished stage leaves `summary.json` there and is skipped when run
again, an interrupted one resumes from its checkpoints; another stage or other config values
in the same workdir are an error (`workdir_guard`). The `pipeline` stage chains stages,
each in its own subfolder; a string "{stage:NAME}" in a later stage's config is replaced by
the workdir of the earlier stage NAME (e.g. to distil from a teacher an earlier stage made).
"""
import importlib
import json
import os
import time

from absl import logging

from kt_jax import paths
from kt_jax.errors import UserError
from kt_jax.stages import workdir_guard

_STAGES = {
    "frozen_eval": "kt_jax.stages.frozen_eval:run",
    "proteus": "kt_jax.stages.proteus:run",
    "convert": "kt_jax.stages.convert:run",
    "distill_task": "kt_jax.stages.distill_task:run",
    "distill_feature": "kt_jax.stages.distill_feature:run",
    "finetune": "kt_jax.stages.finetune:run",
    "pipeline": "kt_jax.stages:run_pipeline",
    "vqgan": "kt_jax.stages.vqgan:run",
    "latent_transformer": "kt_jax.stages.latent_transformer:run",
    "embed": "kt_jax.stages.embed:run",
    "index": "kt_jax.stages.index:run",
    "retrieve": "kt_jax.stages.retrieve:run",
    "shipped_gallery": "kt_jax.stages.shipped_gallery:run",
    "rerepresent": "kt_jax.stages.rerepresent:run",
    "select": "kt_jax.stages.select:run",
    "digg_generate": "kt_jax.stages.digg_generate:run",
    "domain_gap": "kt_jax.stages.domain_gap:run",
}

SUMMARY_FILE = "summary.json"


def resolve(stage: str):
  if stage not in _STAGES:
    raise ValueError(f"Unknown stage {stage!r}; known stages: {', '.join(sorted(_STAGES))}")
  module_name, _, fn_name = _STAGES[stage].partition(":")
  return getattr(importlib.import_module(module_name), fn_name)


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir, failing early with a clear message if it cannot be written.

  Local paths and `file://` URLs become absolute local paths; cloud URLs (gs://...) stay
  URLs and are created and probed through `etils.epath`.
  """
  workdir = paths.absolute(workdir)
  try:
    root = paths.as_path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".write_probe_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UserError(f"Workdir {workdir} is not writable: {e.strerror or e}. "
                    "Pass another --workdir.")
  return workdir


def run(config, workdir: str) -> dict:
  from kt_jax.stages import checks
  checks.check(config)  # stage, config values and paths: before any workdir or teacher
  fn = resolve(config.stage)  # Unknown stage: fail before touching the disk.
  workdir = prepare_workdir(workdir)
  # Another stage or other values than the workdir's run: an error naming them, not a skip.
  workdir_guard.check(config, workdir)
  done = paths.join(workdir, SUMMARY_FILE)
  # A finished stage is not run again; delete the file to redo it. A finished pipeline that
  # grew goes through its stages: the finished ones skip themselves, the new ones run.
  if paths.exists(done) and not workdir_guard.pipeline_grew(config, workdir):
    logging.info("Stage %s already finished in %s; skipping.", config.stage, workdir)
    return json.loads(paths.read_text(done))
  import jax
  is_main = jax.process_index() == 0  # files are written once, by process 0
  if is_main:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  start = time.time()
  summary = fn(config, workdir)
  summary = dict(summary, stage=config.stage, seconds=round(time.time() - start, 1))
  if not summary.get("completed", True):  # stopped early on purpose: resumable, not done
    return summary
  if is_main:
    paths.write_text(done, json.dumps(summary, indent=2))
  logging.info("Stage %s done in %.1f s; summary in %s", config.stage, summary["seconds"], done)
  return summary


def _substitute(config, workdirs: dict):
  """Replaces "{stage:NAME}" in every string of `config` by that stage's workdir."""
  import ml_collections
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  def replace(value: str) -> str:
    for name, path in workdirs.items():
      value = value.replace("{stage:%s}" % name, path)
    return value

  def visit(node):
    for key in list(node.keys()):
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        visit(value)
      elif isinstance(value, str):
        node[key] = replace(value)
      elif isinstance(value, (tuple, list)) and any(isinstance(v, str) for v in value):
        node[key] = type(value)(replace(v) if isinstance(v, str) else v for v in value)
  visit(config)
  return config


COMPILATION_CACHE_DIR = "xla_cache"


def use_compilation_cache(workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at `<workdir>/xla_cache` unless one is set
  (`JAX_COMPILATION_CACHE_DIR` or `jax.config`): a pipeline's stages often compile the very
  same programs (every student finetune of a report has one train step), and a cached one
  loads in about a second instead of compiling again (20 s for a MobileNetV2 train step on
  a 2-core CPU). Local workdirs only. Returns the directory in use."""
  import jax
  current = jax.config.jax_compilation_cache_dir
  if current or "://" in workdir:
    return current
  cache = os.path.join(workdir, COMPILATION_CACHE_DIR)
  jax.config.update("jax_compilation_cache_dir", cache)
  logging.info("Compiled programs are cached in %s (shared by the pipeline's stages).", cache)
  return cache


def run_pipeline(config, workdir: str) -> dict:
  """Runs `config.stages` (name -> stage config) in `config.order`, each in workdir/<name>.

  (ConfigDict iterates its keys sorted, so the order is spelled out.)
  """
  missing = set(config.stages) ^ set(config.order)
  if missing:
    raise ValueError(f"config.order and config.stages name different stages: {sorted(missing)}")
  use_compilation_cache(workdir)
  workdirs, summaries = {}, {}
  for name in config.order:
    stage_config = config.stages[name]
    workdirs[name] = paths.join(workdir, name)
    summary = run(_substitute(stage_config, workdirs), workdirs[name])
    summaries[name] = summary
    if not summary.get("completed", True):
      return {"stages": summaries, "completed": False}
  return {"stages": summaries}
