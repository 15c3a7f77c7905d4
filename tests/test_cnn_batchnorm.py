"""Every shipped CNN teacher in train mode updates its BatchNorm statistics, and in eval mode
(the default, how teachers run) leaves them alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax import convert


@pytest.mark.parametrize("name", [pytest.param("efficientnet_lite0", marks=pytest.mark.slow),
                                  "mobilenet_v2"])
def test_train_mode_updates_batch_stats(name):
  module, variables = convert.load_pretrained(name)
  x = jnp.ones((2, 32, 32, 3))
  train_step = jax.jit(lambda v, x, rng: module.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}))
  out, updates = train_step(variables, x, jax.random.key(1))
  assert out["logits"].shape == (2, 1000)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  _, unchanged = module.apply(variables, x, mutable=["batch_stats"])
  for a, b in zip(before, jax.tree.leaves(unchanged["batch_stats"])):
    np.testing.assert_array_equal(a, b)
