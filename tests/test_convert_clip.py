"""CLIP, SigLIP and SigLIP2 vision towers: transformers directories in, outputs equal to the
transformers PyTorch models (random non-trivial weights) at the native size and another."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from kt_jax import convert  # noqa: E402
from kt_jax.models.clip import ContrastiveViT  # noqa: E402
from teacher_reference import TINY, images, nchw, perturb, rel_err  # noqa: E402

TOL = 1e-4
BF16_TOL = 2e-2  # bf16 compute against fp32, relative to the output scale (measured <= 8e-3)


def _clip(with_projection=True):
  config = transformers.CLIPVisionConfig(image_size=32, projection_dim=16, **TINY)
  cls = (transformers.CLIPVisionModelWithProjection if with_projection
         else transformers.CLIPVisionModel)
  return perturb(cls(config), seed=1)


def _siglip():
  return perturb(transformers.SiglipVisionModel(
      transformers.SiglipVisionConfig(image_size=32, **TINY)), seed=2)


def _siglip2():
  return perturb(transformers.Siglip2VisionModel(
      transformers.Siglip2VisionConfig(num_patches=16, **TINY)), seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (reference model, its save_pretrained directory)."""
  out = {}
  for name, build in (("clip", _clip), ("siglip", _siglip), ("siglip2", _siglip2)):
    model = build()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    out[name] = (model, str(path))
  return out


def _ours(path, x, dtype=jnp.float32):
  module, variables = convert.load_pretrained(path)
  module = module.clone(dtype=dtype)
  variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)
  return module, {k: np.asarray(v, np.float32) for k, v in
                  jax.jit(module.apply)(variables, jnp.asarray(x, dtype)).items()}


@pytest.mark.parametrize("size", [32, 48])
def test_clip_with_projection_matches_transformers(saved, size):
  model, path = saved["clip"]
  x = images(0, size, size)
  module, ours = _ours(path, x)
  assert isinstance(module, ContrastiveViT) and module.projection_dim == 16
  with torch.no_grad():
    ref = model(pixel_values=nchw(x), interpolate_pos_encoding=True)
    tower = model.vision_model(pixel_values=nchw(x), interpolate_pos_encoding=True)
    normed = model.vision_model.post_layernorm(tower.last_hidden_state)
  assert rel_err(ours["x_prenorm"], ref.last_hidden_state) < TOL
  assert rel_err(ours["x_norm_clstoken"], tower.pooler_output) < TOL
  assert rel_err(ours["image_embeds"], ref.image_embeds) < TOL
  assert rel_err(ours["x_norm_patchtokens"], normed[:, 1:]) < TOL
  assert ours["x_norm_regtokens"].shape == (2, 0, 32)


def test_clip_vision_model_without_projection(tmp_path):
  model = _clip(with_projection=False)
  model.save_pretrained(tmp_path)
  x = images(1, 32, 32)
  module, ours = _ours(str(tmp_path), x)
  assert module.projection_dim == 0
  with torch.no_grad():
    ref = model(pixel_values=nchw(x))
  assert rel_err(ours["x_norm_clstoken"], ref.pooler_output) < TOL
  assert rel_err(ours["x_prenorm"], ref.last_hidden_state) < TOL


@pytest.mark.slow
def test_full_clip_model_imports_its_vision_half(tmp_path):
  config = transformers.CLIPConfig(
      vision_config=dict(image_size=32, **TINY),
      text_config=dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                       **{k: v for k, v in TINY.items() if k != "patch_size"}),
      projection_dim=16)
  model = perturb(transformers.CLIPModel(config), seed=4)
  model.save_pretrained(tmp_path)
  x = images(2, 32, 32)
  _, ours = _ours(str(tmp_path), x)
  with torch.no_grad():
    ref = model.get_image_features(pixel_values=nchw(x))
  ref = getattr(ref, "pooler_output", ref)
  assert rel_err(ours["image_embeds"], ref) < TOL


@pytest.mark.parametrize("size", [32, 48])
def test_siglip_matches_transformers(saved, size):
  model, path = saved["siglip"]
  x = images(3, size, size)
  module, ours = _ours(path, x)
  assert module.pool == "map" and not module.class_token
  with torch.no_grad():
    ref = model(pixel_values=nchw(x), interpolate_pos_encoding=True)
  assert rel_err(ours["x_norm_patchtokens"], ref.last_hidden_state) < TOL
  assert rel_err(ours["x_norm_clstoken"], ref.pooler_output) < TOL


def _patchify(x: np.ndarray, p: int) -> torch.Tensor:
  """Siglip2's image processor: (row, column, channel)-flattened patches, row-major."""
  b, h, w, c = x.shape
  patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return torch.from_numpy(np.ascontiguousarray(patches.reshape(b, (h // p) * (w // p), -1)))


@pytest.mark.parametrize("height,width", [(32, 32), (40, 24)])
def test_siglip2_matches_transformers(saved, height, width):
  model, path = saved["siglip2"]
  x = images(4, height, width)
  module, ours = _ours(path, x)
  assert module.pos_resample == "bilinear_antialias"
  pixels = _patchify(x, 8)
  shapes = torch.tensor([[height // 8, width // 8]] * 2)
  with torch.no_grad():
    ref = model(pixel_values=pixels, pixel_attention_mask=torch.ones(pixels.shape[:2],
                                                                     dtype=torch.long),
                spatial_shapes=shapes)
  assert rel_err(ours["x_norm_patchtokens"], ref.last_hidden_state) < TOL
  assert rel_err(ours["x_norm_clstoken"], ref.pooler_output) < TOL


# One tower in the default suite (SigLIP: its head too); the same module computes CLIP's.
@pytest.mark.parametrize("name", [pytest.param("clip", marks=pytest.mark.slow), "siglip",
                                  pytest.param("siglip2", marks=pytest.mark.slow)])
def test_bf16_compute_is_close_to_fp32(saved, name):
  _, path = saved[name]
  x = images(5, 32, 32)
  _, fp32 = _ours(path, x)
  _, bf16 = _ours(path, x, jnp.bfloat16)
  for key in ("x_norm_clstoken", "x_norm_patchtokens"):
    assert rel_err(bf16[key], fp32[key]) < BF16_TOL, key


def test_wrong_checkpoint_lists_the_mismatched_keys(saved, tmp_path):
  from safetensors.torch import load_file, save_file
  _, path = saved["siglip"]
  state = load_file(f"{path}/model.safetensors")
  del state["encoder.layers.1.mlp.fc2.bias"]
  state["encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 31)
  state["extra.weight"] = torch.zeros(3)
  save_file(state, tmp_path / "bad.safetensors")
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.load_pretrained(str(tmp_path / "bad.safetensors"))
  message = str(e.value)
  for key in ("encoder.layers.1.mlp.fc2.bias", "extra.weight", "blocks_0/attn/qkv/kernel"):
    assert key in message


def test_input_spec_of_a_transformers_directory_is_the_family_s(saved):
  from kt_jax.models.clip import CLIP_MEAN, SIGLIP_MEAN
  assert convert.input_spec(saved["clip"][1]).mean == CLIP_MEAN
  assert convert.input_spec(saved["clip"][1]).image_size == 32
  assert convert.input_spec(saved["siglip2"][1]).mean == SIGLIP_MEAN
