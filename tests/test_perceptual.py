"""The perceptual distance (not LPIPS) against the same recipe in NumPy on the real PyTorch
EfficientNet-Lite0 (its block outputs through forward hooks), with the shipped weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kt_jax.objectives import perceptual
from test_efficientnet_lite import torch_reference


def lpips_recipe_numpy(features_x, features_y):
  """LPIPS with lpips=False: unit-normalise channels, squared difference summed over
  channels, mean over positions, sum over layers."""
  total = 0.0
  for fx, fy in zip(features_x, features_y):
    nx = fx / (np.sqrt((fx ** 2).sum(1, keepdims=True)) + 1e-10)
    ny = fy / (np.sqrt((fy ** 2).sum(1, keepdims=True)) + 1e-10)
    total = total + ((nx - ny) ** 2).sum(1).mean((1, 2))
  return total


def torch_block_features(model, images, blocks):
  captured = {}
  hooks = [model._blocks[b].register_forward_hook(
      lambda m, i, o, b=b: captured.__setitem__(b, o.numpy())) for b in blocks]
  with torch.no_grad():
    model.extract_features(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  for h in hooks:
    h.remove()
  return [captured[b] for b in blocks]


def test_default_distance_matches_the_recipe_on_the_torch_network():
  loss, variables = perceptual.load("efficientnet_lite0")
  rng = np.random.RandomState(0)
  x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.randn(*x.shape), -1, 1).astype(np.float32)
  ours = np.asarray(jax.jit(loss.distance)(variables, x, y))
  model = torch_reference("efficientnet_lite0", dynamic_padding=True)
  normalise = lambda im: (((im + 1) / 2 - np.array(loss.spec.mean)) /
                          np.array(loss.spec.std)).astype(np.float32)
  blocks = [int(name.split("_")[1]) for name in loss.layers]
  expected = lpips_recipe_numpy(torch_block_features(model, normalise(x), blocks),
                                torch_block_features(model, normalise(y), blocks))
  assert ours.shape == (2,) and np.all(expected > 0)
  np.testing.assert_allclose(ours, expected, rtol=2e-3)


@pytest.mark.slow  # a whole EfficientNet-Lite0 backward: over a minute on 2 cores
def test_distance_is_zero_on_equal_images_and_differentiable():
  loss, variables = perceptual.load("random:efficientnet_lite0", perceptual.EFFICIENTNET_LITE0_LAYERS)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
  np.testing.assert_allclose(loss.distance(variables, x, x), 0.0, atol=1e-6)
  grad = jax.grad(lambda y: loss.distance(variables, x, y).sum())(x + 0.1)
  assert float(jnp.abs(grad).max()) > 0


def test_unknown_layer_is_named():
  loss, variables = perceptual.load("random:efficientnet_lite0", ("blocks_0", "block_99"))
  with pytest.raises(ValueError, match=r"\['block_99'\] are not submodules"):
    loss.distance(variables, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)))
