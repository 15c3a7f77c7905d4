"""The segmentation head's skip decoder (DeepLabv3+ without ASPP) against the same decoder
written in PyTorch, and its input checks."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kt_jax import models
from kt_jax.errors import UserError
from kt_jax.models.classifier import Segmenter
from kt_jax.stages import checks


def _torch_conv(x, params, padding=0):
  """A flax Conv/Dense kernel (..., in, out) applied to NCHW with torch."""
  kernel = torch.from_numpy(np.array(params["kernel"]))
  if kernel.ndim == 2:
    kernel = kernel[None, None]
  weight = kernel.permute(3, 2, 0, 1).contiguous()
  return F.conv2d(x, weight, torch.from_numpy(np.array(params["bias"])), padding=padding)


def test_skip_decoder_matches_torch():
  backbone = models.create("resnet18", stage_sizes=(1, 1), width=8)
  model = Segmenter(backbone, num_classes=5, hidden=6, skip_stride=4)
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 40, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  variables = jax.tree.map(  # non-zero biases, so that every term is checked
      lambda v: v + 0.1 * jax.random.normal(jax.random.key(1), v.shape), variables)
  out = model.apply(variables, x)
  assert out["stride_4"].shape == (2, 8, 10, 8) and out["feature_map"].shape == (2, 4, 5, 16)
  p = variables["params"]
  nchw = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  coarse = F.relu(_torch_conv(nchw(out["feature_map"]), p["head_project"]))
  fine = F.relu(_torch_conv(nchw(out["stride_4"]), p["head_skip"]))
  coarse = F.interpolate(coarse, size=fine.shape[2:], mode="bilinear", align_corners=False)
  h = F.relu(_torch_conv(torch.cat([coarse, fine], 1), p["head_hidden"], padding=1))
  logits = F.interpolate(_torch_conv(h, p["head"]), size=(32, 40), mode="bilinear",
                         align_corners=False)
  np.testing.assert_allclose(out["logits"], logits.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-4, atol=1e-5)
  assert p["head_skip"]["kernel"].shape == (8, 3) and p["head_project"]["kernel"].shape == (16, 6)


def test_frozen_backbone_gets_no_gradient_through_the_skip():
  backbone = models.create("resnet18", stage_sizes=(1, 1), width=4)
  model = Segmenter(backbone, 3, hidden=4, skip_stride=4, frozen_backbone=True)
  x = jax.random.normal(jax.random.key(3), (1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  grads = jax.grad(lambda p: model.apply({**variables, "params": p}, x)["logits"].sum())(
      variables["params"])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["backbone"]))
  assert float(jnp.abs(grads["head_skip"]["kernel"]).max()) > 0


def _head(skip_stride, hidden):
  return ml_collections.ConfigDict({"skip_stride": skip_stride, "hidden": hidden})


def test_check_spatial_names_a_missing_skip_map_before_compute():
  vit = models.create("vit_tiny_patch16", depth=1)
  with pytest.raises(UserError, match=r"skip_stride=4 .* stride_4 .*only CNNs"):
    checks.check_spatial(vit, 32, "vit_tiny_patch16", _head(4, 8))
  cnn = models.create("resnet18", stage_sizes=(1, 1), width=4)
  with pytest.raises(UserError, match=r"stride_2 .*\(it has: stride_4, stride_8\)"):
    checks.check_spatial(cnn, 32, "resnet18", _head(2, 8))
  with pytest.raises(UserError, match="hidden >= 2"):
    checks.check_spatial(cnn, 32, "resnet18", _head(4, 0))
  checks.check_spatial(cnn, 32, "resnet18", _head(4, 8))
  checks.check_spatial(vit, 32, "vit_tiny_patch16", _head(0, 0))
