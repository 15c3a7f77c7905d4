"""The VQGAN objective against a naive re-computation of taming's loss, and both generative
stages end to end on tiny settings (VQGAN, then the latent transformer on its codes)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax import config_defaults, models, stages
from kt_jax.models.patchgan import PatchGAN
from kt_jax.models.registry import InputSpec
from kt_jax.objectives import gan
from kt_jax.objectives.vqgan import LAST_LAYER, VQGANObjective, _get, _replace

SIZE = 16


def tiny_objective(disc_start):
  return VQGANObjective(
      vqgan=models.create("vqgan_tiny", codebook_size=32), discriminator=PatchGAN(8, 1),
      perceptual=None, perceptual_variables=None,
      data_spec=InputSpec(SIZE, (0.5,) * 3, (0.5,) * 3), disc_weight=0.8, disc_start=disc_start)


@pytest.mark.parametrize("step", [pytest.param(0, marks=pytest.mark.slow), 5])
def test_generator_loss_and_gradient_match_a_naive_recomputation(step):
  objective = tiny_objective(disc_start=3)
  images = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3), minval=-1, maxval=1)
  batch = {"image": images}
  params, state = objective.init(jax.random.key(1), batch)
  state["gan"]["step"] = jnp.asarray(step, jnp.int32)

  def naive(vq_params):
    """taming: nll + d_weight * disc_factor * g_loss + codebook, d_weight from two separate
    autograd.grad calls on the last layer."""
    def outputs(p):
      return objective.vqgan.apply({"params": p}, images, train=True)
    def disc(r):
      return objective.discriminator.apply(
          {"params": params["discriminator"], **state["discriminator"]}, r, train=True,
          mutable=["batch_stats"])[0]
    nll_of = lambda k: jnp.mean(jnp.abs(images - outputs(_replace(vq_params, LAST_LAYER, k))["recon"]))
    g_of = lambda k: -jnp.mean(disc(outputs(_replace(vq_params, LAST_LAYER, k))["recon"]))
    kernel = _get(vq_params, LAST_LAYER)
    gn, gg = jax.grad(nll_of)(kernel), jax.grad(g_of)(kernel)
    weight = jnp.clip(jnp.linalg.norm(gn) / (jnp.linalg.norm(gg) + 1e-4), 0, 1e4) * 0.8
    out = outputs(vq_params)
    factor = 1.0 if step >= 3 else 0.0
    loss = (jnp.mean(jnp.abs(images - out["recon"]))
            + jax.lax.stop_gradient(weight) * factor * -jnp.mean(disc(out["recon"]))
            + out["codebook_loss"] + out["commitment_loss"])
    return loss, weight

  (expected, weight), expected_grad = jax.jit(jax.value_and_grad(naive, has_aux=True))(
      params["vqgan"])
  fn = lambda vq: objective.generator_loss(dict(params, vqgan=vq), state, {}, batch, None)
  (loss, (metrics, new_state)), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(
      params["vqgan"])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["d_weight"], weight, rtol=1e-4)
  assert float(metrics["disc_factor"]) == (1.0 if step >= 3 else 0.0)
  # Tolerance on the scale of the whole gradient: some leaves (a bias before a GroupNorm) have
  # a true gradient of zero, and their float noise (~1e-9) has no scale of its own.
  scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(expected_grad))
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
  # The discriminator's running statistics moved (taming's train-mode forward on fakes).
  assert not np.allclose(new_state["discriminator"]["batch_stats"]["norm_1"]["mean"],
                         state["discriminator"]["batch_stats"]["norm_1"]["mean"])


def test_discriminator_loss_is_hinge_after_disc_start_and_counts_steps():
  objective = tiny_objective(disc_start=1)
  images = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3), minval=-1, maxval=1)
  params, state = objective.init(jax.random.key(1), {"image": images})
  loss0, (_, state1) = objective.discriminator_loss(params, state, {}, {"image": images}, None)
  assert float(loss0) == 0.0 and int(state1["gan"]["step"]) == 1
  loss1, (m, state2) = objective.discriminator_loss(params, state1, {}, {"image": images}, None)
  recon = objective.vqgan.apply({"params": params["vqgan"]}, images)["recon"]
  variables = {"params": params["discriminator"], **state1["discriminator"]}
  real, upd = objective.discriminator.apply(variables, images, mutable=["batch_stats"])
  fake, _ = objective.discriminator.apply({**variables, **upd}, recon, mutable=["batch_stats"])
  np.testing.assert_allclose(loss1, gan.hinge_d_loss(real, fake), rtol=1e-5)
  assert int(state2["gan"]["step"]) == 2


def generative_configs(tmp_path):
  vq = config_defaults.vqgan_config()
  vq.update(image_size=SIZE, batch_size=4, total_steps=3, log_every_steps=1,
            checkpoint_every_steps=3, eval_every_steps=2, async_checkpoints=False)
  vq.vqgan.overrides = {"codebook_size": 32}
  vq.discriminator.update(ndf=8, n_layers=1)
  vq.loss.update(disc_start=1, perceptual_network="")
  vq.data.update(pool_size=24, pool_crop_size=SIZE, holdout=4)
  lt = config_defaults.latent_transformer_config()
  lt.update(image_size=SIZE, batch_size=4, total_steps=3, log_every_steps=1,
            checkpoint_every_steps=3, eval_every_steps=0, async_checkpoints=False,
            vqgan_path=str(tmp_path / "vqgan"))
  lt.transformer.overrides = {"vocab_size": 32, "seq_len": 16, "width": 32, "depth": 1,
                              "num_heads": 2}
  lt.samples.rows = 2
  lt.optimizer.warmup_steps = 1
  lt.data.update(pool_size=24, pool_crop_size=SIZE, holdout=4)
  return vq, lt


def test_vqgan_then_latent_transformer_end_to_end(tmp_path):
  vq, lt = generative_configs(tmp_path)
  summary = stages.run(vq, str(tmp_path / "vqgan"))
  rows = [json.loads(line) for line in open(tmp_path / "vqgan" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert [r["disc_factor"] for r in rows] == [0.0, 1.0, 1.0]
  for key in ("generator/loss", "discriminator/loss", "rec_loss", "psnr", "usage", "d_loss"):
    assert key in rows[0]
  assert {"rec_loss", "psnr", "usage"} <= set(summary["before_training"])
  for name in ("reconstructions.png", "vqgan_curves.png", "loss_curves.png",
               "reconstructions/step_000000.png", "reconstructions/step_000002.png",
               "model/model.json"):
    assert (tmp_path / "vqgan" / name).exists(), name
  # Both optimizers' states are in the checkpoint.
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(tmp_path / "vqgan" / "checkpoints" / "3" / "state")
  assert set(state["opt_state"]) == {"generator", "discriminator"}

  summary = stages.run(lt, str(tmp_path / "lt"))
  assert summary["train_codes"] == [2 * 20, 16] and summary["heldout_codes"] == [4, 16]
  codes = sorted(os.listdir(tmp_path / "lt" / "codes"))
  assert codes == ["heldout_00000000.npy", "train_00000000.npy"]
  # The cached codes are the VQGAN's indices of the unaugmented images.
  from kt_jax import convert
  module, variables = convert.load_pretrained(str(tmp_path / "vqgan" / "model"))
  assert np.load(tmp_path / "lt" / "codes" / "heldout_00000000.npy").max() < 32
  for name in ("samples.png", "latent_curves.png", "model/model.json"):
    assert (tmp_path / "lt" / name).exists(), name
  assert np.isfinite(summary["after_training"]["ce_loss"])
