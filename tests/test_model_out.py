"""The trained student leaves the workdir: a real tiny Proteus run writes `model/` and
`model_ema/`, `convert extract` turns any checkpoint into the same format, and both load with
`convert.load_pretrained` and as transformers models with the features of the trained params.

Each test runs on two workdirs: a real training run (slow: it compiles the train step), and,
by default, one whose checkpoints and model hold the real objective's real initial state,
written by the same functions the trainer calls. The reference features come from the
checkpoint itself (orbax, the registry's student module, `params/student`), not from the code
under test.
"""
import functools
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kt_jax import convert, models, stages
from kt_jax.convert import __main__ as convert_cli, kt_format
from kt_jax.models.registry import InputSpec
from test_trainer import tiny_config

_STEPS, _EMA = 4, 0.9


def _untrained_run(workdir, config):
  """Checkpoints at steps 2 and 4 and model/, model_ema/ as the trainer writes them, from the
  objective's own init (perturbed per step) instead of training."""
  import jax.numpy as jnp
  from kt_jax.stages import proteus as proteus_stage
  from kt_jax.train import checkpoint, model_out
  from kt_jax.train.state import TrainState
  objective = proteus_stage.build_objective(config)
  size = config.image_size
  sample = {"image": np.zeros((1, size, size, 3), np.float32)}
  params, model_state = jax.jit(objective.init)(jax.random.key(0), sample)
  ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
  for step in (2, _STEPS):
    rng = np.random.RandomState(step)  # NumPy: eager jax ops would compile once per shape
    params = jax.tree.map(lambda x: np.asarray(x) + 0.01 * rng.randn(*x.shape).astype(x.dtype),
                          params)
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, model_state=model_state,
                       opt_state={}, ema_params=jax.tree.map(lambda x: 0.5 * x, params),
                       rng=jax.random.key_data(jax.random.key(1)))
    ckpt.save(step, state, {}, config.to_json_best_effort())
  ckpt.close()
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  model_out.write_layout(str(workdir), config, objective, state)
  model_out.save_trained(str(workdir), config, objective, state)


@pytest.fixture(scope="module",
                params=["untrained", pytest.param("trained", marks=pytest.mark.slow)])
def run(request, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(request.param)
  config = tiny_config(total_steps=_STEPS, checkpoint_every_steps=2, ema_decay=_EMA)
  if request.param == "trained":
    stages.run(config, str(workdir))
  else:
    _untrained_run(workdir, config)
  return workdir, config


def _checkpoint_student(workdir, step, which="params"):
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return state[which]["student"]


def _images(size, n=3):
  return np.random.RandomState(0).randn(n, size, size, 3).astype(np.float32)


@functools.lru_cache
def _jitted_apply(module_json: str):
  """One compiled forward per module (and input shape), however many params are compared."""
  return jax.jit(kt_format.module_from_spec(json.loads(module_json)).apply)


def _apply(module, variables, images):
  spec = json.dumps(kt_format.module_spec(module), sort_keys=True)
  return jax.device_get(_jitted_apply(spec)(variables, images))


def _reference(config, student_params, images):
  module = models.create(config.student.name, **config.student.overrides.to_dict())
  return _apply(module, {"params": student_params}, images)


def _features(model_dir, images):
  return _apply(*convert.load_pretrained(str(model_dir)), images)


def _assert_same(a, b, rtol=1e-5):
  for key in ("x_norm_clstoken", "x_norm_patchtokens"):
    scale = np.abs(a[key]).max()
    np.testing.assert_allclose(b[key] / scale, a[key] / scale, atol=rtol, err_msg=key)


def test_training_writes_model_and_ema_model(run):
  workdir, config = run
  images = _images(config.image_size)
  for out_dir, which in (("model", "params"), ("model_ema", "ema_params")):
    expected = _reference(config, _checkpoint_student(workdir, _STEPS, which), images)
    _assert_same(expected, _features(workdir / out_dir, images))
    assert convert.input_spec(str(workdir / out_dir)) == InputSpec(
        config.image_size, tuple(config.data.mean), tuple(config.data.std))
    recorded = json.loads((workdir / out_dir / "model.json").read_text())
    assert recorded["step"] == _STEPS and recorded["stage"] == "proteus"
  # The EMA differs from the raw weights: model_ema/ is not a copy of model/.
  raw, ema = (_checkpoint_student(workdir, _STEPS, w) for w in ("params", "ema_params"))
  assert not np.allclose(raw["cls_token"], ema["cls_token"])


def test_extract_any_checkpoint(run, tmp_path):
  workdir, config = run
  images = _images(config.image_size)
  assert convert_cli.main(["extract", "--workdir", str(workdir), "--step", "2",
                           "--out", str(tmp_path / "s2")]) == 0
  _assert_same(_reference(config, _checkpoint_student(workdir, 2), images),
               _features(tmp_path / "s2", images))
  assert convert_cli.main(["extract", "--workdir", str(workdir), "--ema",
                           "--out", str(tmp_path / "ema")]) == 0  # default: latest step
  _assert_same(_reference(config, _checkpoint_student(workdir, _STEPS, "ema_params"), images),
               _features(tmp_path / "ema", images))
  # Without the layout the trainer recorded, the objective is rebuilt from config.json.
  bare = tmp_path / "bare"
  shutil.copytree(workdir, bare, ignore=shutil.ignore_patterns("model_layout.json"))
  assert convert_cli.main(["extract", "--workdir", str(bare), "--step", "2"]) == 0
  _assert_same(_reference(config, _checkpoint_student(workdir, 2), images),
               _features(bare / "model_step2", images))


def test_extract_errors_are_one_line(run, tmp_path, capsys):
  workdir, _ = run
  (tmp_path / "empty").mkdir()
  assert convert_cli.main(["extract", "--workdir", str(tmp_path / "empty")]) == 2
  err = capsys.readouterr().err.strip()
  assert "has no checkpoints" in err and "\n" not in err
  assert convert_cli.main(["extract", "--workdir", str(workdir), "--step", "3"]) == 2
  err = capsys.readouterr().err.strip()
  assert "No checkpoint of step 3" in err and "saved steps: 2, 4" in err and "\n" not in err


def test_student_exports_to_transformers_with_the_same_features(run, tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  workdir, config = run
  assert convert_cli.main(["export", "--src", str(workdir / "model"), "--out",
                           str(tmp_path / "hf"), "--format", "hf"]) == 0
  hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
  for size in (config.image_size, 224):  # the trained size, and the native one (no resampling)
    images = _images(size)
    expected = _reference(config, _checkpoint_student(workdir, _STEPS), images)
    with torch.no_grad():
      out = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
    out = out.numpy()
    got = {"x_norm_clstoken": out[:, 0], "x_norm_patchtokens": out[:, 1:]}
    _assert_same(expected, got, rtol=1e-4)


def test_task_model_keeps_head_batch_stats_and_class_names(tmp_path):
  """A classifier student (a small ResNet + head, BatchNorm statistics in the model state): model/
  and `extract` hold backbone, head and statistics, and the objective's class names."""
  import jax.numpy as jnp
  from kt_jax import bench
  from kt_jax.models.classifier import Classifier
  from kt_jax.objectives.task_distill import TaskDistill
  from kt_jax.train import checkpoint, model_out
  from kt_jax.train.state import TrainState
  config = bench.task_distill_bench_config()
  config.image_size = 32
  spec = InputSpec(32, tuple(config.data.mean), tuple(config.data.std))
  student = Classifier(models.create("resnet18", stage_sizes=(1, 1), width=8), 3)  # small
  objective = TaskDistill(student=student, teacher=student, teacher_variables={},
                          data_spec=spec, teacher_spec=spec)
  objective.class_names = ("cat", "dog", "fish")
  images = _images(32)
  params, model_state = jax.jit(objective.init)(jax.random.key(0), {"image": images})
  rng = np.random.RandomState(0)  # statistics that are not the init's zeros and ones
  model_state = jax.tree.map(lambda x: np.asarray(x) + rng.rand(*x.shape).astype(x.dtype),
                             model_state)
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=params, model_state=model_state,
                     opt_state={}, ema_params=None, rng=jax.random.key_data(jax.random.key(1)))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(3, state, {}, config.to_json_best_effort())
  ckpt.close()
  model_out.write_layout(str(tmp_path), config, objective, state)
  model_out.save_trained(str(tmp_path), config, objective, state)
  expected = _apply(student, {"params": params["student"], **model_state["student"]}, images)
  assert model_out.extract(str(tmp_path), out=str(tmp_path / "extracted")) == str(
      tmp_path / "extracted")
  for model_dir in (tmp_path / "model", tmp_path / "extracted"):
    got = _features(model_dir, images)
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    recorded = json.loads((model_dir / "model.json").read_text())
    assert recorded["class_names"] == ["cat", "dog", "fish"]
    assert recorded["fields"]["num_classes"] == 3
  with pytest.raises(model_out.ExtractError, match="without EMA"):
    model_out.extract(str(tmp_path), ema=True)
