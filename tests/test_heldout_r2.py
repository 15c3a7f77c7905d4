"""R^2 against independent formulas, the held-out proxy split, and R^2 in a real run's log."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import r2_score

from kt_jax import errors as stages_errors, stages
from kt_jax.data import builder, sources
from kt_jax.eval.regression import r_squared
from test_trainer import tiny_config


def _numpy_r2(prediction, target):
  """The textbook formula, written out in NumPy: 1 - SS_res / SS_tot, per-dimension means."""
  y = target.reshape(-1, target.shape[-1]).astype(np.float64)
  f = prediction.reshape(-1, prediction.shape[-1]).astype(np.float64)
  return 1.0 - ((y - f) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()


@pytest.mark.parametrize("shape", [(64, 7), (8, 5, 3)])
def test_r2_matches_numpy_and_sklearn(shape):
  rng = np.random.default_rng(0)
  target = rng.normal(size=shape) * rng.uniform(0.1, 3, size=shape[-1]) + 2.0
  prediction = target + rng.normal(size=shape) * 0.7
  ours = float(r_squared(jnp.asarray(prediction, jnp.float32), jnp.asarray(target, jnp.float32)))
  np.testing.assert_allclose(ours, _numpy_r2(prediction, target), rtol=1e-5)
  flat = lambda a: a.reshape(-1, shape[-1])
  np.testing.assert_allclose(
      ours, r2_score(flat(target), flat(prediction), multioutput="variance_weighted"), rtol=1e-5)


def test_r2_of_the_mean_is_zero_and_of_the_target_is_one():
  target = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
  mean = np.broadcast_to(target.mean(axis=0), target.shape)
  assert abs(float(r_squared(mean, target))) < 1e-6
  assert float(r_squared(target, target)) == pytest.approx(1.0)
  assert float(r_squared(-target, target)) < 0  # worse than predicting the mean


def test_holdout_split_is_disjoint_deterministic_and_keeps_ids():
  source = sources.InMemorySource(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1))
  train, held = builder.split_holdout(source, 5, seed=3)
  train_ids = {train[i]["id"] for i in range(len(train))}
  held_ids = {held[i]["id"] for i in range(len(held))}
  assert len(held_ids) == 5 and len(train_ids) == 15 and not train_ids & held_ids
  assert train_ids | held_ids == set(range(20))
  assert all(held[i]["image"].item() == held[i]["id"] for i in range(5))  # ids name records
  again = builder.split_holdout(source, 5, seed=3)[1]
  assert [again[i]["id"] for i in range(5)] == [held[i]["id"] for i in range(5)]
  assert builder.split_holdout(source, 0)[1] is None
  with pytest.raises(ValueError, match="leaves no training image"):
    builder.split_holdout(source, 20)


def test_run_logs_heldout_r2_of_student_against_teacher(tmp_path):
  config = tiny_config(**{"total_steps": 4, "eval_every_steps": 2, "data.holdout": 8})
  summary = stages.run(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "eval.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    assert np.isfinite(row["student/heldout/cls_r2"]) and np.isfinite(row["student/heldout/patch_r2"])
  before = summary["student_before"]["student/heldout/cls_r2"]
  assert before < rows[-1]["student/heldout/cls_r2"]  # a random head is far off; training helps


def test_ridge_fit_matches_sklearn():
  from sklearn.linear_model import Ridge
  from kt_jax.eval.regression import ridge_fit
  rng = np.random.default_rng(2)
  x = rng.normal(size=(80, 6)) * rng.uniform(0.1, 2, 6) + 1.0
  y = x @ rng.normal(size=(6, 3)) + rng.normal(size=(80, 3)) * 0.3 + 5.0
  kernel, bias = ridge_fit(x, y, alpha=0.05)
  reference = Ridge(alpha=0.05 * len(x)).fit(x, y)
  np.testing.assert_allclose(kernel, reference.coef_.T, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bias, reference.intercept_, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # test_ridge_fit_matches_sklearn checks the same solve in seconds
def test_ridge_heads_are_sklearns_ridge_on_the_students_normed_tokens():
  from sklearn.linear_model import Ridge
  from kt_jax.objectives.proteus import HEAD_NORM_EPS
  from kt_jax.stages import proteus as proteus_stage
  objective = proteus_stage.build_objective(tiny_config())
  images = np.random.default_rng(0).normal(size=(12, 64, 64, 3)).astype(np.float32)
  params, _ = objective.init(jax.random.key(0), {"image": images[:1]})
  fitted = objective.ridge_heads(params, objective.frozen(), images, alpha=0.1, batch_size=5)
  assert jax.tree.map(lambda a, b: bool((a == b).all()), params["student"],
                      fitted["student"]) == jax.tree.map(lambda _: True, params["student"])
  student = objective.student.apply({"params": params["student"]}, images)
  cls = np.asarray(student["x_norm_clstoken"], np.float64)
  normed = (cls - cls.mean(-1, keepdims=True)) / np.sqrt(cls.var(-1, keepdims=True) + HEAD_NORM_EPS)
  reference = Ridge(alpha=0.1 * len(images)).fit(normed, np.asarray(
      objective.targets(objective.teacher.apply(objective.frozen(), proteus_renormalise(
          objective, images)))[0]))
  ours = objective.heads.apply({"params": fitted["heads"]}, student["x_norm_clstoken"],
                               student["x_norm_patchtokens"], student["x_norm_patchtokens"])[0]
  np.testing.assert_allclose(np.asarray(ours), reference.predict(normed), rtol=1e-3, atol=1e-3)


def proteus_renormalise(objective, images):
  from kt_jax.objectives.proteus import renormalise
  return renormalise(jnp.asarray(images), objective.data_spec, objective.teacher_spec)


def test_eval_curves_png_starts_at_init_with_teacher_levels(tmp_path):
  from kt_jax.train import metrics
  rows = [{"step": 5, "student/heldout/cls_r2": 0.2, "student/mnist/knn_top1": 0.3},
          {"step": 10, "student/heldout/cls_r2": 0.4, "student/mnist/knn_top1": 0.35}]
  (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = metrics.plot_eval_curves(str(tmp_path), {"student/heldout/cls_r2": -1.0},
                                  {"teacher/mnist/knn_top1": 0.8})
  import matplotlib.image
  image = matplotlib.image.imread(path)
  assert image.shape[1] > image.shape[0] > 100  # two panels side by side
  assert metrics.plot_eval_curves(str(tmp_path / "none")) is None


def test_a_holdout_as_large_as_the_pool_is_an_error_before_any_teacher():
  config = tiny_config(**{"data.pool_size": 6, "data.pool_mnist": 2, "data.holdout": 8,
                          "teacher.path": "/nonexistent/teacher.pth"})
  with pytest.raises(stages_errors.UserError, match="holdout=8 leaves no training image"):
    builder.validate(config)


def test_the_proxy_pool_can_be_digits_only_photos_only_or_both():
  sizes = {}
  for photos, digits in ((0, 5), (4, 0), (4, 5)):
    config = tiny_config(**{"data.pool_size": photos, "data.pool_mnist": digits})
    builder.validate(config)
    source = builder.build_source(config)
    sizes[photos, digits] = len(source)
    # Digits are grey (equal channels); natural crops are not.
    grey = [np.ptp(source[i]["image"].astype(int), axis=-1).max() == 0 for i in range(len(source))]
    assert sum(grey) == digits
  assert sizes == {(0, 5): 5, (4, 0): 4, (4, 5): 9}
  with pytest.raises(stages_errors.UserError, match="positive sum"):
    builder.validate(tiny_config(**{"data.pool_size": 0, "data.pool_mnist": 0}))
