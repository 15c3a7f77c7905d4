"""Training a VQGAN as taming-transformers' VQLPIPSWithDiscriminator does, on the one trainer.

Two update groups, applied in order in one compiled step (`kt_jax.objectives.base`):
- `generator` (the VQGAN): L1 reconstruction + `perceptual_weight` x perceptual distance
  (`kt_jax.objectives.perceptual`: EfficientNet-Lite0 features, NOT LPIPS) + `codebook_weight`
  x (codebook + commitment losses) + adaptive weight x disc_factor x hinge generator loss;
- `discriminator` (PatchGAN): disc_factor x hinge loss on the inputs and on the (updated)
  VQGAN's reconstructions, each through its own forward pass as in taming.
disc_factor is 0 before `disc_start` steps. The adaptive weight is taken on the decoder's last
convolution (`decoder/conv_out/kernel`). The step count the GAN switch reads is kept in the
model state (`gan/step`), so it is checkpointed and resumes with the run.

Images arrive normalised with mean = std = 0.5, i.e. in [-1, 1], the VQGAN's range.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models.registry import InputSpec
from kt_jax.objectives import gan
from kt_jax.objectives.base import UpdateGroup
from kt_jax.objectives.perceptual import Perceptual

LAST_LAYER = ("decoder", "conv_out", "kernel")


def psnr(x, y) -> jax.Array:
  """PSNR in dB of images in [-1, 1] (peak-to-peak 2), per image."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def _replace(tree: dict, path: tuple[str, ...], value) -> dict:
  if len(path) == 1:
    return {**tree, path[0]: value}
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@dataclasses.dataclass
class VQGANObjective:
  vqgan: nn.Module
  discriminator: nn.Module
  perceptual: Perceptual | None
  perceptual_variables: Any
  data_spec: InputSpec          # the VQGAN's input: mean = std = 0.5 ([-1, 1])
  perceptual_weight: float = 1.0
  codebook_weight: float = 1.0
  disc_weight: float = 0.8      # taming's configs
  disc_factor: float = 1.0
  disc_start: int = 0
  adaptive_weight: bool = True

  def init(self, rng, batch):
    k_vq, k_d = jax.random.split(rng)
    images = batch["image"][:1]
    vq = dict(self.vqgan.init(k_vq, images))
    disc = dict(self.discriminator.init(k_d, images))
    params = {"vqgan": vq.pop("params"), "discriminator": disc.pop("params")}
    return params, {"vqgan": vq, "discriminator": disc,
                    "gan": {"step": jnp.zeros((), jnp.int32)}}

  def frozen(self):
    return {"perceptual": self.perceptual_variables} if self.perceptual is not None else {}

  def update_groups(self):
    return {"generator": UpdateGroup(("vqgan",), self.generator_loss),
            "discriminator": UpdateGroup(("discriminator",), self.discriminator_loss)}

  def _discriminate(self, params, model_state, images):
    variables = {"params": params["discriminator"], **model_state["discriminator"]}
    if model_state["discriminator"]:  # BatchNorm: batch statistics, running ones updated
      logits, updates = self.discriminator.apply(variables, images, train=True,
                                                 mutable=list(model_state["discriminator"]))
      return logits, dict(updates)
    return self.discriminator.apply(variables, images, train=True), {}

  def _reconstruct(self, vq_params, model_state, images, train):
    variables = {"params": vq_params, **model_state["vqgan"]}
    if train and model_state["vqgan"]:  # the EMA codebook's statistics
      out, updates = self.vqgan.apply(variables, images, train=True,
                                      mutable=list(model_state["vqgan"]))
      return out, dict(updates)
    return self.vqgan.apply(variables, images, train=train), model_state["vqgan"]

  def reconstruction_loss(self, frozen, images, recon):
    """(taming's nll_loss: mean L1 + perceptual_weight x mean perceptual, (l1, perceptual))."""
    l1 = jnp.mean(jnp.abs(images - recon))
    if self.perceptual is None or not self.perceptual_weight:
      return l1, (l1, jnp.zeros(()))
    p = jnp.mean(self.perceptual.distance(frozen["perceptual"], images, recon))
    return l1 + self.perceptual_weight * p, (l1, p)

  def generator_loss(self, params, model_state, frozen, batch, rng):
    del rng
    images = batch["image"]
    step = model_state["gan"]["step"]

    def forward(kernel):  # the VQGAN as a function of its last layer (for the adaptive weight)
      out, vq_state = self._reconstruct(_replace(params["vqgan"], LAST_LAYER, kernel),
                                        model_state, images, train=True)
      return out["recon"], (out, vq_state)
    recon, pull_back, (out, vq_state) = gan.last_layer_vjp(
        forward, _get(params["vqgan"], LAST_LAYER))
    nll, (l1, p_loss), d_nll = gan.value_and_output_grad(
        lambda r: self.reconstruction_loss(frozen, images, r), recon)
    def adversarial(r):
      logits, updates = self._discriminate(params, model_state, r)
      return gan.hinge_g_loss(logits), updates
    g_loss, disc_state, d_g = gan.value_and_output_grad(adversarial, recon)
    factor = gan.disc_factor(step, self.disc_start, self.disc_factor)
    if self.adaptive_weight:
      d_weight = gan.adaptive_weight(pull_back(d_nll), pull_back(d_g), self.disc_weight)
    else:
      d_weight = jnp.asarray(self.disc_weight, jnp.float32)
    quant = out["codebook_loss"] + out["commitment_loss"]
    loss = nll + d_weight * factor * g_loss + self.codebook_weight * quant
    metrics = {"rec_loss": l1, "perceptual_loss": p_loss, "nll_loss": nll, "g_loss": g_loss,
               "d_weight": d_weight, "disc_factor": factor,
               "codebook_loss": out["codebook_loss"], "commitment_loss": out["commitment_loss"],
               "perplexity": out["perplexity"], "usage": out["usage"],
               "psnr": jnp.mean(psnr(images, recon))}
    return loss, (metrics, dict(model_state, vqgan=vq_state, discriminator=disc_state))

  def discriminator_loss(self, params, model_state, frozen, batch, rng):
    del frozen, rng
    images = batch["image"]
    step = model_state["gan"]["step"]
    out, _ = self._reconstruct(params["vqgan"], model_state, images, train=False)
    recon = jax.lax.stop_gradient(out["recon"])
    logits_real, disc_state = self._discriminate(params, model_state, images)
    logits_fake, disc_state = self._discriminate(
        params, dict(model_state, discriminator=disc_state or model_state["discriminator"]),
        recon)
    factor = gan.disc_factor(step, self.disc_start, self.disc_factor)
    d_loss = factor * gan.hinge_d_loss(logits_real, logits_fake)
    metrics = {"d_loss": d_loss, "logits_real": jnp.mean(logits_real),
               "logits_fake": jnp.mean(logits_fake)}
    new_state = dict(model_state, discriminator=disc_state or model_state["discriminator"],
                     gan={"step": step + 1})
    return d_loss, (metrics, new_state)

  def feature_model(self, params, model_state):
    return self.vqgan, {"params": params["vqgan"], **model_state["vqgan"]}

  def teacher_model(self):
    return None
