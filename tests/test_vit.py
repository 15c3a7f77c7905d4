"""The Flax ViT's own behaviour: registry, dtypes, stochastic depth, block outputs, and the
position-embedding resampling against torch's F.interpolate itself."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kt_jax import models
from kt_jax.models import vit  # noqa: F401  (registers the ViTs)
from kt_jax.models.interpolate import resample_grid_matrices

TINY = dict(depth=2)


def _init(module, hw=(64, 64), **kw):
  x = jnp.asarray(np.random.RandomState(0).randn(2, *hw, 3), jnp.float32)
  return module.init(jax.random.key(0), x, **kw), x


@pytest.mark.parametrize("name,tokens,regs,width", [
    ("vit_small_patch14_dinov2", 16, 0, 384),
    ("vit_base_patch14_reg4_dinov2", 16, 4, 768),
    ("vit_tiny_patch16", 16, 0, 192),
    ("vit_small_patch32", 4, 0, 384),
])
def test_registry_models_output_dinov2_keys(name, tokens, regs, width):
  module = models.create(name, **TINY)
  side = 4 * module.patch_size if module.patch_size != 32 else 64
  variables, x = _init(module, (side, side))
  out = module.apply(variables, x)
  assert out["x_norm_clstoken"].shape == (2, width)
  assert out["x_norm_regtokens"].shape == (2, regs, width)
  assert out["x_norm_patchtokens"].shape == (2, tokens, width)
  assert out["x_prenorm"].shape == (2, 1 + regs + tokens, width)


def test_giant_uses_swiglu_with_dinov2_hidden_size():
  module = models.create("vit_giant_patch14_dinov2", depth=1)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3))))
  # DINOv2's SwiGLUFFNFused: (int(6144 * 2 / 3) + 7) // 8 * 8 = 4096 hidden, w12 packs two.
  assert shapes["params"]["blocks_0"]["mlp"]["w12"]["kernel"].shape == (1536, 8192)


def test_unknown_model_lists_known_ones():
  with pytest.raises(KeyError, match="vit_small_patch14_dinov2"):
    models.create("vit_enormous")


def test_bf16_compute_close_to_fp32():
  module = models.create("vit_tiny_patch16", **TINY)
  variables, x = _init(module)
  ref = module.apply(variables, x)["x_norm_clstoken"]
  low = models.create("vit_tiny_patch16", dtype=jnp.bfloat16, **TINY).apply(variables, x)
  assert low["x_norm_clstoken"].dtype == jnp.bfloat16
  err = np.abs(np.asarray(low["x_norm_clstoken"], np.float32) - np.asarray(ref)).max()
  assert 0 < err < 0.1 * np.abs(np.asarray(ref)).max()


def test_stochastic_depth_only_in_training():
  module = models.create("vit_tiny_patch16", drop_path_rate=0.5, **TINY)
  variables, x = _init(module)
  eval_out = module.apply(variables, x)["x_prenorm"]
  plain = models.create("vit_tiny_patch16", **TINY).apply(variables, x)["x_prenorm"]
  np.testing.assert_allclose(eval_out, plain, rtol=1e-6)
  a = module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})["x_prenorm"]
  b = module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})["x_prenorm"]
  assert not np.allclose(a, b)


def test_return_blocks_and_empty_mask():
  module = models.create("vit_tiny_patch16", **TINY)
  variables, x = _init(module)
  out = module.apply(variables, x, return_blocks=2)
  assert len(out["blocks"]) == 2
  np.testing.assert_array_equal(out["blocks"][-1], out["x_prenorm"])
  no_mask = module.apply(variables, x, np.zeros((2, 16), bool))
  np.testing.assert_allclose(no_mask["x_prenorm"], out["x_prenorm"], rtol=1e-6, atol=1e-6)


def test_masked_patches_take_the_mask_token():
  module = models.create("vit_tiny_patch16", depth=0, pos_grid=4)  # no blocks, no resampling
  variables, x = _init(module)
  params = jax.tree.map(lambda a: a, variables["params"])
  params["mask_token"] = jnp.ones_like(params["mask_token"]) * 3.0
  masks = np.zeros((2, 16), bool)
  masks[0, [1, 5]] = True
  out = module.apply({"params": params}, x, masks)["x_prenorm"]
  plain = module.apply({"params": params}, x)["x_prenorm"]
  pos = params["pos_embed"][0]
  np.testing.assert_allclose(out[0, 2], 3.0 + pos[2], rtol=1e-6)  # token 1+1: cls first
  changed = np.abs(np.asarray(out - plain)).max(-1) > 0
  assert changed[0].tolist() == [False, False, True, False, False, False, True] + [False] * 10
  assert not changed[1].any()


def test_input_not_multiple_of_patch_is_an_error():
  module = models.create("vit_tiny_patch16", **TINY)
  with pytest.raises(ValueError, match="multiple of the patch size"):
    _init(module, (60, 64))


@pytest.mark.parametrize("out_hw", [(5, 9), (12, 3), (7, 7), (16, 16)])
@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, False), (0.0, True)])
def test_resampling_matches_torch_interpolate(out_hw, offset, antialias):
  grid = np.random.RandomState(0).randn(1, 4, 7, 7).astype(np.float32)
  if offset:
    ref = F.interpolate(torch.from_numpy(grid), mode="bicubic",
                        scale_factor=((out_hw[0] + offset) / 7, (out_hw[1] + offset) / 7))
  else:
    ref = F.interpolate(torch.from_numpy(grid), size=out_hw, mode="bicubic",
                        align_corners=False, antialias=antialias)
  rows, cols = resample_grid_matrices((7, 7), out_hw, offset, antialias)
  ours = np.einsum("oh,bchw,pw->bcop", rows, grid, cols)
  np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
