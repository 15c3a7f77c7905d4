"""The VQGAN against transformers' JanusVQVAE (random non-trivial weights), and its codebook
against NumPy: nearest code, straight-through gradient, losses, usage, perplexity, EMA."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import JanusVQVAE, JanusVQVAEConfig

from kt_jax import models
from kt_jax.convert import vqgan as convert_vqgan
from kt_jax.convert.strict import CheckpointMismatchError
from kt_jax.models import vqgan

IMAGE_SIZE = 16
TINY = dict(embed_dim=4, num_embeddings=32, latent_channels=32, base_channels=32,
            channel_multiplier=[1, 2], num_res_blocks=1, num_patches=IMAGE_SIZE // 2)


def _reference(seed=0, unit_codes=True):
  """A tiny JanusVQVAE whose every weight, GroupNorm affine included, is random."""
  torch.manual_seed(seed)
  model = JanusVQVAE(JanusVQVAEConfig(**TINY)).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5, generator=gen)
      elif name.endswith("bias"):
        p.normal_(0.0, 0.1, generator=gen)
      elif p.ndim == 4:
        p.normal_(0.0, (2.0 / (p.shape[1] * p.shape[2] * p.shape[3])) ** 0.5, generator=gen)
    codes = model.quantize.embedding.weight
    codes.normal_(0.0, 1.0, generator=gen)
    if unit_codes:
      codes.div_(codes.norm(dim=1, keepdim=True))
  return model


def _images(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _assert_close(name, ours, ref, rtol=1e-4):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  diff = float(np.max(np.abs(ours - ref)))
  scale = float(np.max(np.abs(ref)))
  print(f"{name}: max abs diff {diff:.3g} (reference max {scale:.3g})")
  assert diff <= rtol * scale, name


def test_import_parity_with_transformers_janus_vqvae():
  ref = _reference()
  module, variables = convert_vqgan.convert(ref.state_dict())
  assert module.l2_normalize and module.downsampling == 2
  images = _images()
  out = jax.jit(module.apply)(variables, images)
  with torch.no_grad():
    enc = ref.encode(_nchw(images))
    pre_quant = ref.quant_conv(enc.last_hidden_state)
    tokens = enc.image_tokens.reshape(len(images), -1)
    recon = ref.decode(tokens)
  _assert_close("quant_conv output", out["pre_quant"], _nhwc(pre_quant))
  # Unit-norm codes: transformers' unnormalised lookup and the l2-normalised one agree.
  np.testing.assert_array_equal(np.asarray(out["indices"]).reshape(len(images), -1),
                                tokens.numpy())
  _assert_close("decoder output", out["recon"], _nhwc(recon))
  decode_indices = jax.jit(functools.partial(module.apply, method="decode_indices"))
  _assert_close("decode_indices", decode_indices(variables, out["indices"]), _nhwc(recon))


def test_unnormalised_lookup_matches_transformers_encode():
  ref = _reference(seed=1, unit_codes=False)
  module, variables = convert_vqgan.convert(ref.state_dict(), l2_normalize=False)
  images = _images(1)
  out = jax.jit(module.apply)(variables, images)
  with torch.no_grad():
    enc = ref.encode(_nchw(images))
    recon = ref.decoder(ref.post_quant_conv(enc.quantized_last_hidden_state))
  np.testing.assert_array_equal(np.asarray(out["indices"]).reshape(-1),
                                enc.image_tokens.numpy())
  _assert_close("z_q", out["z_q"], _nhwc(enc.quantized_last_hidden_state))
  _assert_close("decoder output", out["recon"], _nhwc(recon))


def test_export_round_trips_into_transformers(tmp_path):
  ref = _reference(seed=2)
  module, variables = convert_vqgan.convert(ref.state_dict())
  exported = convert_vqgan.export(module, variables)
  original = {k: v.numpy() for k, v in ref.state_dict().items()}
  assert sorted(exported) == sorted(original)
  for k in original:
    np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
  convert_vqgan.export_hf(module, variables, str(tmp_path / "hf"), image_size=IMAGE_SIZE)
  reloaded = JanusVQVAE.from_pretrained(str(tmp_path / "hf")).eval()
  images = _nchw(_images(2))
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(images).decoded_pixel_values.numpy(),
                                  ref(images).decoded_pixel_values.numpy())


def test_taming_layout_reverses_the_decoder_levels():
  ref = _reference(seed=3)
  module, variables = convert_vqgan.convert(ref.state_dict())
  taming = convert_vqgan.export(module, variables, layout="taming")
  assert convert_vqgan.detect_layout(taming) == "taming"
  taming["loss.discriminator.main.0.weight"] = np.zeros((1,))  # taming ships its loss too
  module2, variables2 = convert_vqgan.convert(taming, l2_normalize=True)
  images = _images(3)
  np.testing.assert_array_equal(jax.jit(module.apply)(variables, images)["recon"],
                                jax.jit(module2.apply)(variables2, images)["recon"])


def test_import_names_every_bad_key():
  state = {k: v for k, v in _reference().state_dict().items() if "mid.attn_1.q." not in k}
  state["encoder.surplus.weight"] = torch.zeros(1)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_vqgan.convert(state)
  assert "encoder.mid.attn_1.q.weight" in str(err.value)
  assert "encoder.surplus.weight" in str(err.value)


def test_janus_checkpoint_prefix_and_load_pretrained(tmp_path):
  from safetensors.numpy import save_file
  from kt_jax import convert
  ref = _reference(seed=4)
  state = {f"model.vqmodel.{k}": v.numpy() for k, v in ref.state_dict().items()}
  path = str(tmp_path / "vq.safetensors")
  save_file(state, path)
  module, variables = convert.load_pretrained(path)
  assert isinstance(module, vqgan.VQGAN)
  assert variables["params"]["decoder"]["conv_out"]["kernel"].shape == (3, 3, 32, 3)


# ------------------------------------------------------------------------------------------
# The codebook against NumPy.


def _quantizer(**kwargs):
  fields = dict(codebook_size=64, codebook_dim=6, beta=0.3)
  fields.update(kwargs)
  return vqgan.VectorQuantizer(**fields)


def _z(seed=0, shape=(3, 4, 5, 6)):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("l2", [False, True])
def test_nearest_code_equals_brute_force(l2):
  quantizer = _quantizer(l2_normalize=l2)
  z = _z()
  variables = quantizer.init(jax.random.key(1), z)
  codes = np.asarray(variables["params"]["embedding"], np.float64) * 30  # spread them out
  variables = {"params": {"embedding": jnp.asarray(codes, jnp.float32)}}
  out = quantizer.apply(variables, z)
  zz = np.asarray(z, np.float64).reshape(-1, 6)
  if l2:
    zz = zz / np.linalg.norm(zz, axis=1, keepdims=True)
    codes = codes / np.linalg.norm(codes, axis=1, keepdims=True)
  brute = np.array([np.argmin([np.sum((v - c) ** 2) for c in codes]) for v in zz])
  np.testing.assert_array_equal(np.asarray(out["indices"]).reshape(-1), brute)
  np.testing.assert_allclose(np.asarray(out["z_q"]).reshape(-1, 6), codes[brute], atol=1e-5)
  # Losses: their formulas, in NumPy.
  q = codes[brute]
  np.testing.assert_allclose(out["commitment_loss"], 0.3 * np.mean((q - zz) ** 2), rtol=1e-5)
  np.testing.assert_allclose(out["codebook_loss"], np.mean((q - zz) ** 2), rtol=1e-5)
  counts = np.bincount(brute, minlength=64)
  p = counts / counts.sum()
  np.testing.assert_allclose(out["usage"], np.mean(counts > 0), rtol=1e-6)
  np.testing.assert_allclose(out["perplexity"], np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))),
                             rtol=1e-5)


def test_straight_through_gradient_is_the_identity():
  quantizer = _quantizer()
  z = _z(1, (2, 3, 6))
  variables = quantizer.init(jax.random.key(0), z)
  jacobian = jax.jacobian(lambda z: quantizer.apply(variables, z)["z_q"])(z)
  np.testing.assert_array_equal(np.asarray(jacobian).reshape(z.size, z.size), np.eye(z.size))
  # and only the codebook loss moves the codes; the commitment loss moves only z.
  grads = jax.grad(lambda p, z: quantizer.apply({"params": p}, z)["commitment_loss"],
                   argnums=(0, 1))(variables["params"], z)
  assert float(jnp.abs(grads[0]["embedding"]).max()) == 0.0
  assert float(jnp.abs(grads[1]).max()) > 0.0


def test_ema_update_follows_its_formula_and_restarts_dead_codes():
  quantizer = _quantizer(ema=True, ema_decay=0.9, dead_code_threshold=0.95)
  z = _z(2, (4, 8, 6))
  variables = quantizer.init(jax.random.key(0), z)
  assert "params" not in variables
  before = jax.tree.map(np.asarray, variables[vqgan.EMA_COLLECTION])
  out, updated = quantizer.apply(variables, z, train=True, mutable=[vqgan.EMA_COLLECTION])
  assert float(out["codebook_loss"]) == 0.0
  after = jax.tree.map(np.asarray, updated[vqgan.EMA_COLLECTION])
  idx = np.asarray(out["indices"]).reshape(-1)
  counts = np.bincount(idx, minlength=64)
  sums = np.zeros((64, 6))
  np.add.at(sums, idx, np.asarray(z).reshape(-1, 6))
  cluster = 0.9 * before["cluster_size"] + 0.1 * counts
  alive = cluster >= 0.95  # unused codes decay to 0.9 < threshold: restarted
  assert (~alive).any() and alive.any()
  np.testing.assert_allclose(after["cluster_size"][alive], cluster[alive], rtol=1e-6)
  np.testing.assert_allclose(after["cluster_size"][~alive], 1.0)
  np.testing.assert_allclose(after["embed_sum"][alive],
                             (0.9 * before["embed_sum"] + 0.1 * sums)[alive], rtol=1e-5,
                             atol=1e-6)
  # restarted codes sit exactly on vectors of the batch
  restarted = after["embed_sum"][~alive]
  batch = np.asarray(z).reshape(-1, 6)
  assert all(np.min(np.abs(batch - r).sum(axis=1)) < 1e-6 for r in restarted)
  total = after["cluster_size"].sum()
  smoothed = (after["cluster_size"] + 1e-5) / (total + 64 * 1e-5) * total
  np.testing.assert_allclose(after["embedding"], after["embed_sum"] / smoothed[:, None],
                             rtol=1e-5)
  # Not in training, or the collection immutable: nothing changes.
  _, same = quantizer.apply(variables, z, train=False, mutable=[vqgan.EMA_COLLECTION])
  np.testing.assert_array_equal(same[vqgan.EMA_COLLECTION]["embedding"], before["embedding"])


def test_registered_variants_shapes():
  for name, size, grid in [("vqgan_tiny", 32, 8), ("vqgan_f16", 32, 2), ("vqgan_f8", 32, 4)]:
    module = models.create(name)
    shapes = jax.eval_shape(lambda m=module, s=size: m.init_with_output(
        jax.random.key(0), jnp.zeros((1, s, s, 3))))
    out, variables = shapes
    assert out["indices"].shape == (1, grid, grid)
    assert out["recon"].shape == (1, size, size, 3)
    assert "kernel" in variables["params"]["decoder"]["conv_out"]


def test_tiny_vqgan_trains_end_to_end_gradients():
  module = models.create("vqgan_tiny")
  images = jnp.asarray(_images(0, 2).repeat(2, 1).repeat(2, 2))
  variables = jax.jit(module.init)(jax.random.key(0), images)

  def loss(params):
    out = module.apply({"params": params}, images, train=True)
    return (jnp.mean((out["recon"] - images) ** 2) + out["commitment_loss"]
            + out["codebook_loss"])
  grads = jax.jit(jax.grad(loss))(variables["params"])
  for part in ("encoder", "decoder", "quantize"):
    assert float(max(jnp.abs(g).max() for g in jax.tree.leaves(grads[part]))) > 0, part


def test_image_size_not_a_multiple_of_the_factor_is_an_error():
  module = models.create("vqgan_tiny")
  with pytest.raises(ValueError, match="multiple of the downsampling"):
    module.init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)))
