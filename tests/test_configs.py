"""Every config: loads, has the keys every training config must have, and its docstring
gives the exact command that runs it."""
import glob
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
TRAINING_STAGES = ("proteus",)
TRAINING_KEYS = ("stage", "seed", "batch_size", "total_steps", "epochs", "log_every_steps",
                 "checkpoint_every_steps", "eval_every_steps", "mesh")


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_documents_its_command(path):
  module = load(path)
  name = os.path.basename(path)
  assert f"python -m kt_jax.main --config=configs/{name}" in module.__doc__
  _check_stage(module.get_config())


def _check_stage(config):
  from kt_jax import stages
  stages.resolve(config.stage)
  if config.stage == "pipeline":
    assert sorted(config.order) == sorted(config.stages)
    for name in config.order:
      _check_stage(config.stages[name])
  elif config.stage in TRAINING_STAGES:
    for key in TRAINING_KEYS:
      assert key in config, key


def test_unknown_override_fails_before_compute(tmp_path):
  import subprocess
  import sys
  result = subprocess.run(
      [sys.executable, "-m", "kt_jax.main", "--config=configs/proteus_tiny.py",
       f"--workdir={tmp_path}", "--config.batch_szie=8"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "batch_szie" in result.stderr and "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # nothing was written, nothing computed


def _sections(config):
  """Every stage config of a file (a pipeline's stages too)."""
  if config.stage == "pipeline":
    return [c for name in config.order for c in _sections(config.stages[name])]
  return [config]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_one_schema(path):
  """The same keys in every stage: `teacher.path` (never a bare string) and the shared
  `eval` section, key for key."""
  from kt_jax import config_defaults
  eval_keys = set(config_defaults.eval_config())
  for config in _sections(load(path).get_config()):
    if "teacher" in config:
      assert set(config.teacher) >= {"path"}, config.stage
    if "eval" in config:
      assert set(config.eval) - {"before_training"} == eval_keys, config.stage
    for legacy in ("tasks", "knn", "feature", "task_options"):
      assert legacy not in config, (config.stage, legacy)


def test_shipped_configs_pass_their_checks():
  """Configs that run here check clean; the ImageNet recipes ask for their teacher."""
  from kt_jax.errors import UserError
  from kt_jax.stages import checks
  for path in CONFIGS:
    config = load(path).get_config()
    if os.path.basename(path).startswith("proteus_vit"):
      with pytest.raises(UserError, match="teacher.path"):
        checks.check(config)
    else:
      checks.check(config)


def test_frozen_eval_config_holds_only_what_the_stage_reads():
  """A training option on the demo is an unknown key, not a silently ignored one."""
  from kt_jax import config_defaults
  demo = config_defaults.frozen_eval_config()
  for key in ("optimizer", "data", "batch_size", "total_steps", "student"):
    assert key not in demo
