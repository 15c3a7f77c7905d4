"""Task distillation: the KL loss against PyTorch's (per pixel too), the teacher seeing the
student's exact pixels, the objective actually distilling, the stage and its errors."""
import json
import os

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from kt_jax import config_defaults, models, stages
from kt_jax.convert import kt_format
from kt_jax.data import mixing
from kt_jax.errors import UserError
from kt_jax.eval import report
from kt_jax.models.classifier import Classifier
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import losses, task_distill
import config_overrides


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_kl_equals_torch_kl_div(temperature):
  r = np.random.RandomState(0)
  s, t = r.randn(8, 10).astype(np.float32) * 3, r.randn(8, 10).astype(np.float32) * 3
  want = F.kl_div(F.log_softmax(torch.from_numpy(s) / temperature, -1),
                  F.softmax(torch.from_numpy(t) / temperature, -1),
                  reduction="batchmean") * temperature ** 2
  got = losses.distillation_kl(s, t, temperature)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  assert float(losses.distillation_kl(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_per_pixel_kl_equals_torch_kl_div_over_pixels(temperature):
  """Segmentation logits (B, H, W, C): the mean KL per pixel, i.e. F.kl_div over the logits
  flattened to (pixels, C) with batchmean, x T^2."""
  r = np.random.RandomState(1)
  s, t = r.randn(2, 5, 7, 4).astype(np.float32) * 2, r.randn(2, 5, 7, 4).astype(np.float32) * 2
  flat = lambda x: torch.from_numpy(x.reshape(-1, 4)) / temperature
  want = F.kl_div(F.log_softmax(flat(s), -1), F.softmax(flat(t), -1),
                  reduction="batchmean") * temperature ** 2
  np.testing.assert_allclose(float(losses.distillation_kl(s, t, temperature)), float(want),
                             rtol=1e-5)


def _objective(student_name, **overrides):
  spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3)
  teacher = Classifier(models.create("vit_tiny_patch16", depth=1), 5)
  variables = teacher.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  # Large head weights: a confident teacher whose predictions differ between images.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 50 if "head" in jax.tree_util.keystr(p) else x, variables)
  student = Classifier(models.create(student_name, **overrides), 5)
  return task_distill.TaskDistill(student, teacher, variables, spec, spec)


@pytest.mark.parametrize("student,overrides", [("vit_tiny_patch16", {"depth": 1}),
                                               ("resnet18", {"width": 8})])
def test_student_learns_the_teachers_predictions(student, overrides):
  objective = _objective(student, **overrides)
  images = jnp.asarray(np.random.RandomState(0).randn(16, 32, 32, 3), jnp.float32)
  params, model_state = objective.init(jax.random.key(0), {"image": images})
  assert ("batch_stats" in model_state.get("student", {})) == (student == "resnet18")
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, model_state, opt_state):
    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        params, model_state, objective.frozen(), {"image": images}, jax.random.key(0))
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), model_state, opt_state, metrics

  first = None
  for _ in range(60):
    params, model_state, opt_state, metrics = step(params, model_state, opt_state)
    first = first or metrics
  assert float(metrics["kd_loss"]) < 0.3 * float(first["kd_loss"])
  assert float(metrics["teacher_agreement"]) >= 0.9
  if student == "resnet18":  # the running statistics moved with training
    stats = model_state["student"]["batch_stats"]["backbone"]["bn1"]["mean"]
    assert float(jnp.abs(stats).max()) > 0




def _same_model_objective(data_spec, teacher_spec, **kw):
  """Teacher and student: the same deterministic classifier (no BatchNorm, no dropout)."""
  model = Classifier(models.create("vit_tiny_patch16", depth=1), 5)
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 50 if "head" in jax.tree_util.keystr(p) else x, variables)
  return task_distill.TaskDistill(model, model, variables, data_spec, teacher_spec, **kw), \
      variables


@pytest.mark.parametrize("mix", [{}, {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}])
def test_teacher_and_student_receive_identical_pixels(mix):
  """With the student's params set to the teacher's, the KL is zero only if both models get
  the same pixels: through mixing and a different normalisation, batch after batch."""
  student_spec = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  teacher_spec = InputSpec(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  objective, variables = _same_model_objective(teacher_spec, teacher_spec, **mix)
  images = jnp.asarray(np.random.RandomState(0).randn(8, 32, 32, 3), jnp.float32)
  loss_fn = jax.jit(objective.loss)
  for seed in range(3):
    _, (metrics, _) = loss_fn({"student": variables["params"]}, {}, variables,
                              {"image": images}, jax.random.key(seed))
    assert float(metrics["kd_loss"]) < 1e-6 and float(metrics["teacher_agreement"]) == 1.0
  # Another normalisation: the teacher's input is the student's pixels, renormalised.
  objective, _ = _same_model_objective(student_spec, teacher_spec, **mix)
  student_in, teacher_in = objective.views(images, jax.random.key(0))
  pixels = lambda x, spec: np.asarray(x) * np.asarray(spec.std) + np.asarray(spec.mean)
  np.testing.assert_allclose(pixels(teacher_in, teacher_spec), pixels(student_in, student_spec),
                             atol=1e-5)
  if mix:  # the view is really mixed (not the raw batch)
    assert not np.allclose(np.asarray(student_in), np.asarray(images))


def test_teacher_at_higher_resolution_gets_the_same_view_resized():
  spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3)
  objective, _ = _same_model_objective(spec, spec, teacher_image_size=48, mixup_alpha=1.0)
  images = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  student_in, teacher_in = objective.views(images, jax.random.key(0))
  assert teacher_in.shape == (2, 48, 48, 3)
  expected = torch.nn.functional.interpolate(  # upsampling: half-pixel bilinear, as torch's
      torch.from_numpy(np.asarray(student_in).transpose(0, 3, 1, 2)), size=(48, 48),
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(teacher_in), expected, atol=1e-5)


def test_cutmix_box_has_the_area_lambda_asks_for():
  box = mixing.cutmix_box(jax.random.key(0), 40, 40, 0.75)  # side sqrt(0.25) = half
  area = int(box.sum())
  assert 0 < area <= 20 * 20
  a = mixing.mix(jax.random.key(3), jnp.ones((4, 8, 8, 3)) * jnp.arange(4.)[:, None, None, None],
                 cutmix_alpha=1.0)
  # every pixel comes from the image itself or its partner in the reversed batch
  assert set(np.unique(np.asarray(a[0]))) <= {0.0, 3.0}


def _task_model_dir(path, num_classes=3, backbone="vit_tiny_patch16", **overrides):
  """A finetune stage's model/ stand-in: a backbone + head saved in the kt_jax format."""
  module = Classifier(models.create(backbone, **overrides), num_classes)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kt_format.save(str(path), module, jax.tree.map(np.asarray, variables),
                 {"input_spec": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
                  "class_names": ["a", "b", "c"][:num_classes]})
  return str(path)


def tiny_distill_task_config(teacher_path, **overrides):
  c = config_defaults.distill_task_config()
  c.teacher.path = teacher_path
  c.student.name, c.student.overrides = "resnet18", {"stage_sizes": (1, 1), "width": 8}
  c.image_size, c.batch_size, c.total_steps = 32, 8, 4
  c.log_every_steps, c.checkpoint_every_steps = 1, 4
  c.async_checkpoints = False
  c.data.source, c.data.pool_size, c.data.pool_crop_size = "shipped_pool", 16, 32
  c.data.augment.randaugment = ""
  c.distill.temperature, c.distill.mixup_alpha = 2.0, 0.5
  return config_overrides.apply(c, overrides)


def test_distill_task_stage_end_to_end(tmp_path):
  teacher = _task_model_dir(tmp_path / "teacher", depth=1)
  summary = stages.run(tiny_distill_task_config(teacher), str(tmp_path / "run"))
  assert summary["completed"] and summary["transfer_images"] == 16
  rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 4 and all(np.isfinite(r["kd_loss"]) for r in rows)
  compute = report.pretraining_compute(str(tmp_path / "run" / "model"))
  assert compute["images"] == 32 and compute["flops"] > 0
  # The student with its own head: the teacher's kind of head, its classes, the student's net.
  spec = kt_format.read_spec(str(tmp_path / "run" / "model"))
  assert spec["fields"]["num_classes"] == 3 and spec["class_names"] == ["a", "b", "c"]
  assert spec["fields"]["backbone"]["module"]["class"].endswith("ResNet")
  module, variables = kt_format.load(str(tmp_path / "run" / "model"))
  assert module.apply(variables, jnp.zeros((2, 32, 32, 3)))["logits"].shape == (2, 3)


def test_class_count_mismatch_is_an_error_before_the_teacher_loads(tmp_path):
  teacher = _task_model_dir(tmp_path / "teacher", num_classes=3, depth=1)
  with pytest.raises(UserError, match="3 classes but student.num_classes=5"):
    stages.run(tiny_distill_task_config(teacher, **{"student.num_classes": 5}),
               str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_teacher_without_a_head_is_an_error(tmp_path):
  module = models.create("vit_tiny_patch16", depth=1)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  kt_format.save(str(tmp_path / "backbone"), module, jax.tree.map(np.asarray, variables))
  with pytest.raises(UserError, match="not a task model"):
    stages.run(tiny_distill_task_config(str(tmp_path / "backbone")), str(tmp_path / "run"))


def test_transfer_folder_without_a_readable_image_is_an_error(tmp_path):
  teacher = _task_model_dir(tmp_path / "teacher", depth=1)
  folder = tmp_path / "transfer"
  folder.mkdir()
  for i in range(3):
    (folder / f"broken_{i}.jpg").write_bytes(b"not a jpeg")
  config = tiny_distill_task_config(teacher, **{"data.source": "image_folder",
                                                "data.path": str(folder),
                                                "data.pool_size": 512,
                                                "data.pool_crop_size": 160})
  with pytest.raises(UserError, match="no readable image"):
    stages.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_student_path_initialises_the_student_with_those_weights(tmp_path):
  """`student.path` (exactly one of it and `student.name`): the distillation starts from the
  saved backbone, weights and BatchNorm statistics, not from the seed."""
  teacher = _task_model_dir(tmp_path / "teacher", depth=1)
  backbone = models.create("resnet18", stage_sizes=(1, 1), width=8, num_classes=0)
  saved = jax.jit(backbone.init)(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  saved = jax.tree.map(lambda x: np.asarray(x) + 0.5, saved)  # unlike any seed's init
  kt_format.save(str(tmp_path / "student_init"), backbone, saved,
                 {"input_spec": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}})
  with pytest.raises(UserError, match="exactly one of --config.student.path"):
    stages.run(tiny_distill_task_config(teacher, **{"student.path": str(tmp_path / "x")}),
               str(tmp_path / "both"))
  config = tiny_distill_task_config(teacher, **{
      "student.name": "", "student.path": str(tmp_path / "student_init"),
      "student.overrides": {}, "optimizer.lr": 1e-7, "optimizer.lr_base_batch": 0,
      "total_steps": 2, "checkpoint_every_steps": 2})
  stages.run(config, str(tmp_path / "run"))
  _, trained = kt_format.load(str(tmp_path / "run" / "model"))
  flat_saved = traverse_util.flatten_dict(saved["params"])
  flat_trained = traverse_util.flatten_dict(trained["params"]["backbone"])
  assert set(flat_saved) == set(flat_trained)
  for key, value in flat_saved.items():  # two steps at lr 1e-7 move nothing visibly
    np.testing.assert_allclose(flat_trained[key], value, atol=1e-4, err_msg=str(key))
  # The hooks the stage hands the trainer put the saved BatchNorm statistics in too.
  from kt_jax.stages import distill_task
  objective, loaded = distill_task.build_objective_and_student(config)
  params_hook, state_hook = distill_task.init_hooks(loaded)
  params, state = objective.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
  params, state = params_hook(params), state_hook(state)
  for got, want in ((params["student"]["backbone"], saved["params"]),
                    (state["student"]["batch_stats"]["backbone"], saved["batch_stats"])):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), want)
  assert distill_task.init_hooks(None) == (None, None)
