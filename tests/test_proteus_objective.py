"""Proteus' losses and masks against independent NumPy re-computations of the official
code's semantics (gather the masked tokens, torch.nn.MSELoss over what was gathered)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax import models
from kt_jax.objectives import losses, masking, proteus
from kt_jax.models.registry import InputSpec


def _np_mse(a, b):
  return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _np_proteus(s_cls, s_patch, s_masked, t_cls, t_patch, mask):
  """The official forward, written with NumPy's boolean gather instead of index_select."""
  token = _np_mse(s_cls, t_cls)
  fea = _np_mse(np.concatenate([s_cls[:, None], s_patch], 1),
                np.concatenate([t_cls[:, None], t_patch], 1))
  patch = _np_mse(s_masked[mask], t_patch[mask])  # NaN when nothing is masked
  return token, fea, patch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_numpy(seed):
  rng = np.random.RandomState(seed)
  b, n, d = 4, 9, 7
  arrays = [rng.randn(b, d), rng.randn(b, n, d), rng.randn(b, n, d), rng.randn(b, d),
            rng.randn(b, n, d)]
  mask = rng.rand(b, n) < 0.4
  mask[0, 0] = True
  ours = losses.proteus_losses(*map(jnp.asarray, arrays), jnp.asarray(mask))
  ref = _np_proteus(*arrays, mask)
  for key, value in zip(("token_loss", "fea_loss", "patch_loss"), ref):
    np.testing.assert_allclose(float(ours[key]), value, rtol=1e-5)


def test_patch_loss_without_masks_is_zero_not_nan():
  x = jnp.ones((2, 4, 3))
  value = losses.masked_token_mse(x, 2 * x, jnp.zeros((2, 4), bool))
  assert float(value) == 0.0
  grads = jax.grad(lambda p: losses.masked_token_mse(p, 2 * x, jnp.zeros((2, 4), bool)))(x)
  assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("batch,prob,ratio,first_n", [
    (8, 0.5, (0.5,), True), (10, 0.5, (0.1, 0.5), True), (7, 0.3, (0.25,), False),
    (6, 0.0, (0.5,), True), (9, 1.0, (0.2, 0.6), False)])
def test_mask_counts_follow_the_collate_rule(batch, prob, ratio, first_n):
  n = 49
  masks = np.asarray(masking.proteus_masks(jax.random.key(3), batch, n, prob, ratio, first_n))
  counts = masks.sum(1)
  n_masked = int(batch * prob)
  assert (counts > 0).sum() <= n_masked
  if len(ratio) == 1:
    expected = sorted([int(n * ratio[0])] * n_masked + [0] * (batch - n_masked))
    assert sorted(counts.tolist()) == expected
  else:  # sample i draws its ratio from its own slice of linspace(lo, hi, n_masked + 1)
    edges = np.linspace(ratio[0], ratio[1], n_masked + 1)
    masked_counts = counts[:n_masked] if first_n else np.sort(counts)[-n_masked:]
    if first_n:
      for i, c in enumerate(masked_counts):
        assert int(n * edges[i]) <= c <= int(n * edges[i + 1])
    assert all(int(n * ratio[0]) <= c <= int(n * ratio[1]) for c in masked_counts)
  if first_n:
    assert not counts[n_masked:].any()


def test_masks_are_uniform_over_positions():
  masks = np.asarray(masking.proteus_masks(jax.random.key(0), 2000, 16, 1.0, (0.25,)))
  share = masks.mean(0)
  assert np.all(np.abs(share - 0.25) < 0.04)


def _tiny_objective(**kw):
  student = models.create("vit_tiny_patch16", depth=1)
  teacher = models.create("vit_small_patch16", depth=1)
  tvars = teacher.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  spec = InputSpec(32)
  return proteus.Proteus(student, teacher, tvars, spec, spec, 32, **kw)


def test_objective_loss_equals_numpy_on_its_own_outputs():
  """The objective wires views, heads and teacher as the official forward does."""
  obj = _tiny_objective(mask_probability=0.5, mask_ratio=(0.5,))
  images = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  params, _ = jax.jit(obj.init)(jax.random.key(1), {"image": images})
  rng = jax.random.key(5)
  total, (metrics, _) = jax.jit(obj.loss)(params, {}, obj.frozen(), {"image": images}, rng)
  # Recompute independently: teacher once, student plain and masked separately.
  mask = np.asarray(masking.proteus_masks(jax.random.split(rng)[0], 4, 4, 0.5, (0.5,)))
  t = jax.jit(obj.teacher.apply)(obj.frozen(), images)
  student = jax.jit(obj.student.apply)
  plain = student({"params": params["student"]}, images)
  masked = student({"params": params["student"]}, images, jnp.asarray(mask))
  heads = jax.jit(obj.heads.apply)({"params": params["heads"]}, plain["x_norm_clstoken"],
                                   plain["x_norm_patchtokens"], masked["x_norm_patchtokens"])
  ref = _np_proteus(*[np.asarray(h) for h in heads], np.asarray(t["x_norm_clstoken"]),
                    np.asarray(t["x_norm_patchtokens"]), mask)
  np.testing.assert_allclose(float(total), sum(ref), rtol=1e-5)
  assert mask[:2].sum() == 4 and not mask[2:].any()  # first half masked, ratio 0.5 of 4


def test_token_grid_mismatch_is_a_clear_error():
  student = models.create("vit_tiny_patch32", depth=1)
  teacher = models.create("vit_small_patch16", depth=1)
  tvars = teacher.init(jax.random.key(7), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="16 patch tokens and the student 4"):
    proteus.Proteus(student, teacher, tvars, InputSpec(64), InputSpec(64), 64)


def test_renormalise_maps_student_input_to_teacher_input():
  pixels = np.random.RandomState(0).rand(2, 4, 4, 3)
  a, b = InputSpec(4), InputSpec(4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  x_a = (pixels - np.array(a.mean)) / np.array(a.std)
  x_b = (pixels - np.array(b.mean)) / np.array(b.std)
  np.testing.assert_allclose(proteus.renormalise(jnp.asarray(x_a), a, b), x_b, atol=1e-6)
