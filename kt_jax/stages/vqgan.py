"""The `vqgan` stage: a VQGAN and a PatchGAN trained on upstream images, on the one trainer.

The objective (`kt_jax.objectives.vqgan`) has two update groups, generator and discriminator,
each with its own optimizer (`optimizer`, `optimizers.<group>`), both updated in one compiled
step. At every evaluation, on the held-out images (`data.holdout`): mean L1 and PSNR of the
reconstructions and the share of the codebook they use (`eval.jsonl`), a contact sheet of
inputs beside reconstructions (`reconstructions/step_N.png`, the latest also as
`reconstructions.png`) and `vqgan_curves.png` (reconstruction loss, PSNR, codebook usage).
`model/` is the trained VQGAN, which the `latent_transformer` stage reads.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kt_jax import models, paths
from kt_jax.data import builder
from kt_jax.errors import UserError
from kt_jax.models.registry import InputSpec
from kt_jax.stages import checks

CURVES = {"reconstruction loss (L1)": ["rec_loss"], "PSNR (dB)": ["psnr"],
          "codebook usage": ["usage"]}


def check_unit_range(config) -> None:
  if tuple(config.data.mean) != (0.5, 0.5, 0.5) or tuple(config.data.std) != (0.5, 0.5, 0.5):
    raise UserError(f"The {config.stage} stage needs images in [-1, 1]: data.mean and "
                    "data.std must be (0.5, 0.5, 0.5).")


def validate(config) -> None:
  checks.check_model(config.vqgan.name, config.vqgan.overrides, "vqgan")
  checks.check_choice(config.discriminator.norm, "discriminator.norm",
                      ("batch", "actnorm", "none"))
  if config.loss.perceptual_network:
    checks.check_teacher_path(config.loss.perceptual_network, "loss.perceptual_network")
  check_unit_range(config)
  checks.check_positive(config, "image_size")
  checks.check_non_negative(config, "loss.disc_start", "loss.disc_weight",
                            "loss.perceptual_weight", "loss.codebook_weight")
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  if not config.data.holdout > 0:
    raise UserError("The vqgan stage scores reconstructions on held-out images: set "
                    "--config.data.holdout to a positive number.")
  builder.validate(config)


def build_objective(config):
  from kt_jax.models.patchgan import PatchGAN
  from kt_jax.objectives import perceptual, vqgan as vqgan_objective
  dtype = jnp.dtype(config.compute_dtype)
  vqgan = models.create(config.vqgan.name, dtype=dtype, **config.vqgan.overrides.to_dict())
  disc = PatchGAN(ndf=config.discriminator.ndf, n_layers=config.discriminator.n_layers,
                  norm=config.discriminator.norm, dtype=dtype)
  loss = config.loss
  net, net_vars = None, None
  if loss.perceptual_network and loss.perceptual_weight:
    net, net_vars = perceptual.load(loss.perceptual_network, tuple(loss.perceptual_layers),
                                    loss.perceptual_image_size)
  return vqgan_objective.VQGANObjective(
      vqgan=vqgan, discriminator=disc, perceptual=net, perceptual_variables=net_vars,
      data_spec=InputSpec(config.image_size, (0.5,) * 3, (0.5,) * 3),
      perceptual_weight=loss.perceptual_weight, codebook_weight=loss.codebook_weight,
      disc_weight=loss.disc_weight, disc_factor=loss.disc_factor,
      disc_start=loss.disc_start, adaptive_weight=loss.adaptive_weight)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8 pixels."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def reconstruction_scores(objective, images, batch_size: int = 64):
  """A jitted fn (vqgan variables) -> (scores dict, reconstructions) on fixed images."""
  from kt_jax.objectives.vqgan import psnr
  size = objective.vqgan.codebook_size

  @jax.jit
  def run(variables, chunk):
    out = objective.vqgan.apply(variables, chunk, train=False)
    return out["recon"], out["indices"]

  def score(variables):
    recons, indices = [], []
    for i in range(0, len(images), batch_size):
      recon, idx = run(variables, images[i:i + batch_size])
      recons.append(np.asarray(recon))
      indices.append(np.asarray(idx))
    recon, indices = np.concatenate(recons), np.concatenate(indices)
    counts = np.bincount(indices.reshape(-1), minlength=size)
    probs = counts / counts.sum()
    entropy = -np.sum(probs[probs > 0] * np.log(probs[probs > 0]))
    return {"rec_loss": float(np.mean(np.abs(recon - images))),
            "psnr": float(np.mean(psnr(jnp.asarray(images), jnp.asarray(recon)))),
            "usage": float(np.mean(counts > 0)), "perplexity": float(np.exp(entropy))}, recon
  return score


def save_contact_sheet(workdir: str, step: int, images, recon, rows: int) -> str:
  """Inputs beside their reconstructions, `rows` pairs in two pair-columns."""
  from kt_jax.eval.contact_sheet import save_image_grid
  n = min(rows * 2, len(images))
  pairs = np.stack([to_uint8(images[:n]), to_uint8(recon[:n])], axis=1)  # (n, 2, H, W, 3)
  if n % 2 == 0 and n >= 4:
    pairs = np.concatenate([pairs[: n // 2], pairs[n // 2:]], axis=1)  # (n/2, 4, ...)
  labels = ["input", "reconstruction"] * (pairs.shape[1] // 2)
  directory = paths.join(workdir, "reconstructions")
  os.makedirs(directory, exist_ok=True)
  path = save_image_grid(pairs, paths.join(directory, f"step_{step:06d}.png"), labels=labels)
  save_image_grid(pairs, paths.join(workdir, "reconstructions.png"), labels=labels)
  return path


def make_evaluate(config, workdir: str, objective, holdout_images):
  score = reconstruction_scores(objective, holdout_images)
  is_main = jax.process_index() == 0
  rows = config.get("contact_sheet_rows", 8)

  def evaluate(step, state):
    variables = jax.device_get(objective.feature_model(state.params, state.model_state)[1])
    scores, recon = score(variables)
    if is_main:
      save_contact_sheet(workdir, step, holdout_images, recon, rows)
    logging.info("step %d: held-out %s", step, scores)
    return scores

  return evaluate


def run(config, workdir: str) -> dict:
  from kt_jax.train import metrics, trainer
  objective = build_objective(config)
  stream, steps_per_epoch = builder.build_train_stream(config)
  holdout = builder.holdout_images(config, stream.holdout)
  evaluate = make_evaluate(config, workdir, objective, holdout)
  before = {}
  if config.eval.get("before_training", True) and not paths.exists(
      paths.join(workdir, "checkpoints")):
    rng = jax.random.split(jax.random.key(config.seed))[0]  # the run's init key
    params, model_state = objective.init(rng, {"image": holdout[:1]})
    before = evaluate(0, _Params(params, model_state))
    paths.write_text(paths.join(workdir, "before_training.json"), json.dumps(before))
  elif paths.exists(paths.join(workdir, "before_training.json")):
    before = json.loads(paths.read_text(paths.join(workdir, "before_training.json")))

  def evaluate_and_plot(step, state):
    scores = evaluate(step, state)
    if jax.process_index() == 0:
      metrics.plot_panels(workdir, CURVES, "vqgan_curves.png", before, dict(scores, step=step))
    return scores

  last = trainer.train(config, workdir, objective, stream, steps_per_epoch, evaluate_and_plot)
  after = {}
  eval_file = paths.join(workdir, "eval.jsonl")
  if paths.exists(eval_file):
    after = json.loads(paths.read_text(eval_file).splitlines()[-1])
  summary = {"final_metrics": last, "before_training": before, "after_training": after,
             "codebook_size": int(objective.vqgan.codebook_size),
             "completed": bool(last.get("completed", 1.0))}
  if jax.process_index() == 0:
    summary["curves"] = metrics.plot_panels(workdir, CURVES, "vqgan_curves.png", before)
  print(f"\nheld-out reconstruction: L1 {before.get('rec_loss', float('nan')):.4f} -> "
        f"{after.get('rec_loss', float('nan')):.4f}, PSNR {before.get('psnr', float('nan')):.2f}"
        f" -> {after.get('psnr', float('nan')):.2f} dB, codebook usage "
        f"{after.get('usage', float('nan')):.1%}")
  return summary


class _Params:
  """Just enough of a TrainState for the evaluator before training starts."""

  def __init__(self, params, model_state):
    self.params, self.model_state, self.ema_params = params, model_state, None
