"""Layers the reference code leaves at PyTorch's default init are initialised the same way:
the Proteus heads (nn.Linear) and the ViT patch embedding (nn.Conv2d)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kt_jax import models
from kt_jax.objectives.proteus import ProjectionHead


def _assert_same_distribution(ours, theirs):
  ours, theirs = np.asarray(ours).ravel(), theirs.detach().numpy().ravel()
  # The sample std of n draws varies by ~1/sqrt(2n); the bound of a uniform is sharp.
  np.testing.assert_allclose(ours.std(), theirs.std(), rtol=max(0.03, 3 / np.sqrt(2 * ours.size)))
  bound = max(np.abs(ours).max(), np.abs(theirs).max())
  np.testing.assert_allclose(np.abs(ours).max(), bound, rtol=max(0.02, 10 / ours.size))
  np.testing.assert_allclose(np.abs(theirs).max(), bound, rtol=max(0.02, 10 / ours.size))


def test_projection_head_matches_torch_linear_default():
  torch.manual_seed(0)
  reference = torch.nn.Linear(192, 1280)
  params = ProjectionHead(1280).init(jax.random.key(0), jnp.zeros((1, 192)))["params"]["linear"]
  _assert_same_distribution(params["kernel"], reference.weight)
  _assert_same_distribution(params["bias"], reference.bias)


@pytest.mark.parametrize("patch", [16, 32])
def test_vit_patch_embedding_matches_torch_conv_default(patch):
  torch.manual_seed(0)
  reference = torch.nn.Conv2d(3, 192, patch, patch)
  student = models.create(f"vit_tiny_patch{patch}", depth=1)
  params = student.init(jax.random.key(0), jnp.zeros((1, patch * 2, patch * 2, 3)))["params"]
  _assert_same_distribution(params["patch_embed"]["kernel"], reference.weight)
  _assert_same_distribution(params["patch_embed"]["bias"], reference.bias)
