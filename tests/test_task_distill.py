"""Task distillation: the KL loss against PyTorch's, and the objective actually distilling."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from kt_jax import bench, models
from kt_jax.models.classifier import Classifier
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import losses, task_distill
from kt_jax.stages import task_distill as task_distill_stage


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


def test_only_random_teachers_until_finetuned_teachers_exist():
  c = bench.task_distill_bench_config()
  c.teacher.path = "efficientnet_lite0"
  with pytest.raises(ValueError, match="finetuned"):
    task_distill_stage.build_objective(c)
