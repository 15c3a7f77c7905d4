"""Task-agnostic feature distillation: the losses against NumPy, a CNN's grid resized to the
teacher's (against torch's bilinear), the loss as the formula says, learning, and the stage."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kt_jax import config_defaults, convert, models, stages
from kt_jax.errors import UserError
from kt_jax.eval import report
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import feature_distill, losses
from kt_jax.objectives.feature_regression import resize_tokens
import config_overrides


def test_feature_losses_against_numpy():
  r = np.random.RandomState(0)
  p, t = r.randn(3, 5, 8).astype(np.float32), r.randn(3, 5, 8).astype(np.float32)
  np.testing.assert_allclose(float(losses.mse(p, t)), np.mean((p - t) ** 2), rtol=1e-6)
  cos = np.sum(p * t, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
  np.testing.assert_allclose(float(losses.cosine_distance(p, t)), np.mean(1 - cos), rtol=1e-5)
  assert float(losses.cosine_distance(t, 3 * t)) == pytest.approx(0.0, abs=1e-6)


def test_cnn_grid_resized_to_the_teachers_like_torch_bilinear():
  r = np.random.RandomState(0)
  tokens = r.randn(2, 9, 4).astype(np.float32)  # a 3x3 map
  got = np.asarray(resize_tokens(jnp.asarray(tokens), 36))  # -> 6x6
  grid = torch.from_numpy(tokens.reshape(2, 3, 3, 4).transpose(0, 3, 1, 2))
  want = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bilinear",
                                         align_corners=False)
  np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1).reshape(2, 36, 4),
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(resize_tokens(jnp.asarray(tokens), 9)), tokens)


def _objective(loss_kind="l2", lambda_cls=1.0, lambda_patch=1.0):
  spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3)
  teacher, tvars = convert.load_pretrained("random:vit_tiny_patch16")
  student = models.create("resnet18", stage_sizes=(1, 1), width=8)  # 32 px -> a 4x4 map
  return feature_distill.FeatureDistill(student, teacher, tvars, spec, spec, 32,
                                        loss_kind=loss_kind, lambda_cls=lambda_cls,
                                        lambda_patch=lambda_patch)


@pytest.mark.parametrize("kind", ["l2", pytest.param("cosine", marks=pytest.mark.slow)])
def test_loss_is_the_weighted_regression_of_the_teachers_tokens(kind):
  objective = _objective(kind, lambda_cls=0.5, lambda_patch=2.0)
  images = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  params, state = objective.init(jax.random.key(0), {"image": images})
  loss, (terms, _) = objective.loss(params, state, objective.frozen(), {"image": images},
                                    jax.random.key(1))
  teacher = objective.teacher.apply(objective.frozen(), images)
  out, _ = objective.student.apply({"params": params["student"], **state["student"]}, images,
                                   train=True, mutable=["batch_stats"])
  assert out["x_norm_patchtokens"].shape[1] != teacher["x_norm_patchtokens"].shape[1]
  cls, patches = objective.heads.apply(
      {"params": params["heads"]}, out["x_norm_clstoken"],
      resize_tokens(out["x_norm_patchtokens"], teacher["x_norm_patchtokens"].shape[1]))
  def distance(p, t):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    if kind == "l2":
      return np.mean((p - t) ** 2)
    return np.mean(1 - np.sum(p * t, -1) / np.linalg.norm(p, axis=-1)
                   / np.linalg.norm(t, axis=-1))
  want = (0.5 * distance(cls, teacher["x_norm_clstoken"])
          + 2.0 * distance(patches, teacher["x_norm_patchtokens"]))
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  np.testing.assert_allclose(float(terms["cls_loss"] + terms["patch_loss"]), want, rtol=1e-4)


def test_ridge_heads_start_at_the_least_squares_fit():
  """Ridge-fitted heads (tiny alpha), on the images they were fitted on, do at least as well
  as predicting the teacher's mean (a least-squares fit with a bias always does), unlike
  random heads."""
  objective = _objective()
  images = jnp.asarray(np.random.RandomState(0).randn(32, 32, 32, 3), jnp.float32)
  params, state = objective.init(jax.random.key(0), {"image": images[:1]})
  terms = lambda p: objective.loss(p, state, objective.frozen(), {"image": images},
                                   jax.random.key(1))[1][0]
  fitted = objective.ridge_heads(params, state, objective.frozen(), images, alpha=1e-6)
  teacher = objective.teacher.apply(objective.frozen(), images)
  mean_predictor = {
      "cls_loss": np.var(np.asarray(teacher["x_norm_clstoken"]), axis=0).mean(),
      "patch_loss": np.var(np.asarray(teacher["x_norm_patchtokens"]).reshape(
          -1, teacher["x_norm_patchtokens"].shape[-1]), axis=0).mean()}
  for name, bound in mean_predictor.items():
    assert float(terms(fitted)[name]) <= bound * (1 + 1e-4)
    assert float(terms(params)[name]) > bound
  np.testing.assert_array_equal(  # the student is untouched
      jax.tree.leaves(fitted["student"])[0], jax.tree.leaves(params["student"])[0])


def tiny_distill_feature_config(**overrides):
  c = config_defaults.distill_feature_config()
  c.teacher.path = "random:vit_tiny_patch16"
  c.student.name, c.student.overrides = "resnet18", {"stage_sizes": (1, 1), "width": 8}
  c.image_size, c.batch_size, c.total_steps = 32, 8, 4
  c.log_every_steps, c.checkpoint_every_steps = 1, 4
  c.async_checkpoints = False
  c.data.source, c.data.pool_size, c.data.pool_crop_size = "shipped_pool", 16, 32
  c.data.augment.randaugment = ""
  c.distill.fit_images = 16
  return config_overrides.apply(c, overrides)


def test_distill_feature_stage_writes_a_backbone(tmp_path):
  summary = stages.run(tiny_distill_feature_config(), str(tmp_path))
  assert summary["completed"]
  assert report.pretraining_compute(str(tmp_path / "model"))["images"] == 32
  rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 4 and all(np.isfinite(r["cls_loss"] + r["patch_loss"]) for r in rows)
  module, variables = convert.load_pretrained(str(tmp_path / "model"))
  out = module.apply(variables, jnp.zeros((1, 32, 32, 3)))
  assert "x_norm_clstoken" in out and "logits" not in out  # a backbone, no ImageNet head


def test_bad_loss_is_an_error_before_compute(tmp_path):
  with pytest.raises(UserError, match="distill.loss"):
    stages.run(tiny_distill_feature_config(**{"distill.loss": "l1"}), str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()
