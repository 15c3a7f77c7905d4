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
  assert result.returncode != 0
  assert "batch_szie" in result.stderr
  assert not os.listdir(tmp_path)  # nothing was written, nothing computed
