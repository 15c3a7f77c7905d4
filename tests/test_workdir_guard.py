"""A workdir holds one run: another stage or other values there are one error naming them,
while keys that cannot change results (log/eval/checkpoint frequency, ...) may differ."""
import json
import os
import subprocess
import sys

import pytest

from kt_jax import stages
from kt_jax.stages import workdir_guard
from test_configs import load
from test_trainer import ROOT, tiny_config


def _finished(workdir, config, summary=None):
  """A workdir as a finished run of `config` leaves it (what `stages.run` writes)."""
  os.makedirs(workdir, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  summary = summary or {"stage": config.stage, "completed": True, "seconds": 1.0}
  (workdir / "summary.json").write_text(json.dumps(summary))
  return summary


def test_demo_in_a_finished_proteus_workdir_names_both_stages(tmp_path):
  """The issue's command: it printed "already finished; skipping" and exited 0."""
  _finished(tmp_path, tiny_config())
  done = subprocess.run([sys.executable, "-m", "kt_jax.main", "--config=configs/demo.py",
                         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert "'proteus'" in last and "'frozen_eval'" in last and "skipping" not in done.stderr


def test_a_summary_alone_still_names_its_stage(tmp_path):
  (tmp_path / "summary.json").write_text(json.dumps({"stage": "proteus"}))
  config = load(os.path.join(ROOT, "configs", "demo.py")).get_config()
  with pytest.raises(workdir_guard.WorkdirMismatchError, match="finished 'proteus' run"):
    stages.run(config, str(tmp_path))


def test_changed_value_is_an_error_naming_the_key(tmp_path):
  _finished(tmp_path, tiny_config())
  changed = tiny_config(**{"total_steps": 11, "optimizer.lr": 0.5})
  with pytest.raises(workdir_guard.WorkdirMismatchError) as err:
    stages.run(changed, str(tmp_path))
  message = str(err.value)
  assert "\n" not in message
  assert "optimizer.lr: 0.001 -> 0.5" in message and "total_steps: 10 -> 11" in message
  # A changed model override is named by its full dotted path, added keys as unset.
  with pytest.raises(workdir_guard.WorkdirMismatchError,
                     match=r"student\.overrides\.depth: 2 -> 3.*student\.overrides\.num_heads: "
                     r"'\(unset\)' -> 1"):
    stages.run(tiny_config(**{"student.overrides": {"depth": 3, "num_heads": 1}}), str(tmp_path))


def test_unfinished_run_resumed_with_another_value_is_an_error(tmp_path):
  os.makedirs(tmp_path, exist_ok=True)
  (tmp_path / "config.json").write_text(tiny_config().to_json_best_effort(indent=2))
  with pytest.raises(workdir_guard.WorkdirMismatchError,
                     match=r"an unfinished run .*data\.workers: 0 -> 2"):
    stages.run(tiny_config(**{"data.workers": 2}), str(tmp_path))


def test_result_neutral_keys_may_change(tmp_path):
  summary = _finished(tmp_path, tiny_config())
  relaxed = tiny_config(**{"log_every_steps": 7, "eval_every_steps": 3,
                           "checkpoint_every_steps": 2, "keep_checkpoints": 1,
                           "stop_after_steps": 2, "eval.batch_size": 16,
                           "mesh": {"data": 1}})
  assert stages.run(relaxed, str(tmp_path)) == summary  # skipped: finished, nothing rerun


def test_pipeline_sub_stage_keys_are_named_with_their_path(tmp_path):
  config = load(os.path.join(ROOT, "configs", "pipeline_tiny.py")).get_config()
  _finished(tmp_path, config)
  with config.unlocked():
    config.stages.proteus.log_every_steps = 1  # neutral inside a pipeline too
    assert stages.run(config, str(tmp_path))["completed"]
    config.stages.teacher.src = "mobilenet_v2"
  with pytest.raises(workdir_guard.WorkdirMismatchError,
                     match="stages.teacher.src: 'efficientnet_lite0' -> 'mobilenet_v2'"):
    stages.run(config, str(tmp_path))


def test_a_real_finished_stage_is_skipped_then_guarded(tmp_path):
  """The `convert` stage is a real run in seconds: same config skips, another src errs."""
  import ml_collections
  config = ml_collections.ConfigDict({"stage": "convert", "src": "efficientnet_lite0"})
  first = stages.run(config, str(tmp_path))
  assert stages.run(config, str(tmp_path)) == first
  config.src = "mobilenet_v2"
  with pytest.raises(workdir_guard.WorkdirMismatchError,
                     match="src: 'efficientnet_lite0' -> 'mobilenet_v2'"):
    stages.run(config, str(tmp_path))


@pytest.mark.parametrize("key, neutral", [
    ("log_every_steps", True), ("stages.proteus.log_every_steps", True),
    ("eval.batch_size", True), ("stages.p.eval.batch_size", True), ("mesh.fsdp", True),
    ("batch_size", False), ("data.workers", False), ("eval.tasks", False),
    ("total_steps", False), ("optimizer.lr", False)])
def test_result_neutral_keys(key, neutral):
  assert workdir_guard.is_result_neutral(key) is neutral


def _pipeline(**stage_values):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ml_collections.ConfigDict({name: {"stage": "finetune", "lr": lr}
                                        for name, lr in stage_values.items()})
  c.order = tuple(stage_values)
  return c


def test_a_pipeline_may_grow_but_not_change_or_reorder_its_stages(tmp_path):
  """Adding stages (a retrieved transfer set beside a finished chain) reruns the pipeline:
  finished stages skip themselves, the new ones run. Changing or reordering old ones is an
  error, as for any run."""
  _finished(tmp_path, _pipeline(a=1.0, b=2.0))
  workdir_guard.check(_pipeline(a=1.0, new=3.0, b=2.0), str(tmp_path))
  workdir_guard.check(_pipeline(a=1.0, b=2.0, new=3.0), str(tmp_path))
  with pytest.raises(workdir_guard.WorkdirMismatchError, match=r"stages\.b\.lr: 2\.0 -> 5\.0"):
    workdir_guard.check(_pipeline(a=1.0, b=5.0, new=3.0), str(tmp_path))
  with pytest.raises(workdir_guard.WorkdirMismatchError, match="order"):
    workdir_guard.check(_pipeline(b=2.0, a=1.0), str(tmp_path))
  with pytest.raises(workdir_guard.WorkdirMismatchError, match=r"stages\.b"):
    workdir_guard.check(_pipeline(a=1.0), str(tmp_path))


def test_a_grown_finished_pipeline_runs_only_its_new_stage(tmp_path):
  import ml_collections
  def pipeline(*names):
    models = {"a": "efficientnet_lite0", "b": "mobilenet_v2"}
    return ml_collections.ConfigDict({
        "stage": "pipeline", "order": names,
        "stages": {n: {"stage": "convert", "src": models[n]} for n in names}})
  stages.run(pipeline("a"), str(tmp_path))
  first = (tmp_path / "a" / "summary.json").read_text()
  assert stages.run(pipeline("a"), str(tmp_path))["stage"] == "pipeline"  # finished: skipped
  assert not (tmp_path / "b").exists()
  summary = stages.run(pipeline("a", "b"), str(tmp_path))
  assert set(summary["stages"]) == {"a", "b"} and (tmp_path / "b" / "summary.json").exists()
  assert (tmp_path / "a" / "summary.json").read_text() == first


def test_keys_added_later_match_older_runs_only_at_their_old_value():
  """A finetune config.json written before optimizer.name existed ran AdamW: it matches the
  new default, not SGD."""
  from kt_jax import config_defaults
  new = json.loads(config_defaults.finetune_config().to_json_best_effort())
  old = json.loads(json.dumps(new))
  for key in ("name", "momentum", "nesterov", "schedule", "decay_boundaries", "decay_factor"):
    del old["optimizer"][key]
  del old["data"]["train_images"], old["data"]["augment"]["ratio"]
  assert workdir_guard.differences(old, new) == []
  assert workdir_guard.differences({"stages": {"a": old}}, {"stages": {"a": new}}) == []
  new["optimizer"]["name"] = "sgd"
  assert [k for k, _, _ in workdir_guard.differences(old, new)] == ["optimizer.name"]
