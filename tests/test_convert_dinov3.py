"""DINOv3 ViTs (RoPE, registers, LayerScale, plain and gated MLP) imported from transformers
directories equal transformers' DINOv3ViTModel (random non-trivial weights) at two sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from kt_jax import convert  # noqa: E402
from kt_jax.models.vit import VisionTransformer  # noqa: E402
from teacher_reference import TINY, images, nchw, perturb, rel_err  # noqa: E402

TOL = 1e-4
BF16_TOL = 2e-2  # bf16 compute against fp32, relative to the output scale (measured 6e-3)


def _dinov3(gated=False, registers=2):
  config = transformers.DINOv3ViTConfig(
      image_size=32, num_register_tokens=registers, use_gated_mlp=gated,
      hidden_act="silu" if gated else "gelu", **TINY)
  return perturb(transformers.DINOv3ViTModel(config), seed=5 + gated)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  out = {}
  for gated in (False, True):
    model = _dinov3(gated)
    path = tmp_path_factory.mktemp(f"dinov3_gated{int(gated)}")
    model.save_pretrained(path)
    out[gated] = (model, str(path))
  return out


def _apply(path, x, masks=None, dtype=jnp.float32):
  module, variables = convert.load_pretrained(path)
  module = module.clone(dtype=dtype)
  variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)
  out = jax.jit(module.apply)(variables, jnp.asarray(x, dtype), masks)
  return module, {k: np.asarray(v, np.float32) for k, v in out.items()}


@pytest.mark.parametrize("gated,size", [(False, 32), (False, 48), (True, 32)])
def test_dinov3_matches_transformers(saved, gated, size):
  model, path = saved[gated]
  x = images(0, size, size)
  module, ours = _apply(path, x)
  assert isinstance(module, VisionTransformer) and module.position_encoding == "rope"
  assert module.num_register_tokens == 2 and module.ffn == ("gated" if gated else "mlp")
  with torch.no_grad():
    ref = model(pixel_values=nchw(x)).last_hidden_state.numpy()
  assert rel_err(ours["x_norm_clstoken"], ref[:, 0]) < TOL
  assert rel_err(ours["x_norm_regtokens"], ref[:, 1:3]) < TOL
  assert rel_err(ours["x_norm_patchtokens"], ref[:, 3:]) < TOL


def test_dinov3_masked_patches_match_bool_masked_pos(saved):
  model, path = saved[False]
  x = images(1, 32, 32)
  masks = np.zeros((2, 16), bool)
  masks[0, :5], masks[1, 7:] = True, True
  _, ours = _apply(path, x, jnp.asarray(masks))
  with torch.no_grad():
    ref = model(pixel_values=nchw(x), bool_masked_pos=torch.from_numpy(masks))
  assert rel_err(ours["x_norm_patchtokens"], ref.last_hidden_state[:, 3:]) < TOL


def test_dinov3_bf16_compute_is_close_to_fp32(saved):
  _, path = saved[False]
  x = images(2, 32, 32)
  _, fp32 = _apply(path, x)
  _, bf16 = _apply(path, x, dtype=jnp.bfloat16)
  for key in ("x_norm_clstoken", "x_norm_patchtokens"):
    assert rel_err(bf16[key], fp32[key]) < BF16_TOL, key


def test_dinov3_wrong_checkpoint_lists_the_mismatched_keys(saved, tmp_path):
  from safetensors.torch import load_file, save_file
  _, path = saved[False]
  state = load_file(f"{path}/model.safetensors")
  del state["layer.1.layer_scale2.lambda1"]
  state["norm.weight"] = torch.ones(31)
  save_file(state, tmp_path / "bad.safetensors")
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.load_pretrained(str(tmp_path / "bad.safetensors"))
  assert "layer.1.layer_scale2.lambda1" in str(e.value) and "norm/scale" in str(e.value)


@pytest.mark.slow
def test_imported_teachers_round_trip_through_the_kt_format(saved, tmp_path):
  """`convert import` output (model.json + orbax) rebuilds the same module and outputs."""
  from kt_jax.convert import kt_format
  _, path = saved[False]
  module, variables = convert.load_pretrained(path)
  kt_format.save(str(tmp_path / "dinov3"), module, variables)
  again, again_vars = convert.load_pretrained(str(tmp_path / "dinov3"))
  assert again == module
  x = jnp.asarray(images(3, 32, 32))
  np.testing.assert_array_equal(module.apply(variables, x)["x_norm_patchtokens"],
                                again.apply(again_vars, x)["x_norm_patchtokens"])
