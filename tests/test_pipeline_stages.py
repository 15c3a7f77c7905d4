"""Stages chained in a pipeline: each in its own folder, a later stage reading an earlier
stage's output, finished stages skipped on rerun; weight inheritance against NumPy slicing."""
import json
import os

import numpy as np

from kt_jax import convert, stages
from kt_jax.train.weight_inheritance import inherit_from
from test_configs import load
from test_trainer import ROOT, tiny_config


def test_pipeline_imports_teacher_then_distils_from_it(tmp_path):
  config = load(os.path.join(ROOT, "configs", "pipeline_tiny.py")).get_config()
  small = tiny_config(total_steps=3, checkpoint_every_steps=3)
  small.teacher.path = "{stage:teacher}"
  config.stages.proteus = small
  summary = stages.run(config, str(tmp_path))
  assert set(summary["stages"]) == {"teacher", "proteus"}
  assert (tmp_path / "teacher" / "model.json").exists()
  # The imported teacher remembers EfficientNet's own normalisation, not ImageNet's default.
  recorded = json.loads((tmp_path / "teacher" / "model.json").read_text())["input_spec"]
  assert recorded["mean"] == list(convert.input_spec("efficientnet_lite0").mean)
  assert convert.input_spec(str(tmp_path / "teacher")) == convert.input_spec("efficientnet_lite0")
  assert len((tmp_path / "proteus" / "metrics.jsonl").read_text().splitlines()) == 3
  before = os.path.getmtime(tmp_path / "proteus" / "summary.json")
  stages.run(config, str(tmp_path))  # everything finished: nothing reruns
  assert os.path.getmtime(tmp_path / "proteus" / "summary.json") == before


def test_weight_inheritance_copies_and_slices():
  rng = np.random.RandomState(0)
  f32 = lambda *shape: rng.randn(*shape).astype(np.float32)
  teacher = {"a": {"kernel": f32(6, 8)}, "b": f32(4), "c": f32(3, 3)}
  student = {"a": {"kernel": np.zeros((4, 5), np.float32)}, "b": np.zeros(4, np.float32),
             "c": np.zeros((5, 2), np.float32), "d": np.ones(2, np.float32)}
  out, counts = inherit_from(student, teacher)
  np.testing.assert_array_equal(out["a"]["kernel"], teacher["a"]["kernel"][:4, :5])
  np.testing.assert_array_equal(out["b"], teacher["b"])
  np.testing.assert_array_equal(out["c"], np.zeros((5, 2)))  # teacher smaller in a dim: kept
  np.testing.assert_array_equal(out["d"], np.ones(2))  # absent in the teacher: kept
  assert counts == {"copied": 1, "sliced": 1, "kept": 2}


def test_pipeline_caches_compiled_programs_in_its_workdir_unless_told_otherwise(tmp_path):
  import jax
  from kt_jax import stages
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert stages.use_compilation_cache("gs://bucket/run") is None  # local workdirs only
    got = stages.use_compilation_cache(str(tmp_path))
    assert got == str(tmp_path / stages.COMPILATION_CACHE_DIR)
    assert jax.config.jax_compilation_cache_dir == got
    # A cache the user chose (or an earlier pipeline of this process) is kept.
    assert stages.use_compilation_cache(str(tmp_path / "other")) == got
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
