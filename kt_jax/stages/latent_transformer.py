"""The `latent_transformer` stage: a GPT over a frozen VQGAN's code indices.

1. Encode: the training images (unaugmented, resized to `image_size`, and their mirror
   images with `codes.hflip`) and the held-out images go once through the frozen VQGAN
   (`vqgan_path`: a `vqgan` stage's workdir or its `model/`, any kt_jax VQGAN directory).
   The codes are written to `<workdir>/codes/` chunk by chunk; a rerun keeps the chunks
   already there, so an interrupted encoding resumes.
2. Train next-index cross-entropy on the cached codes (the one trainer; resumable).
At every evaluation: held-out cross-entropy (nats per index) in `eval.jsonl`, a grid of
unconditional samples decoded by the VQGAN (`samples/step_N.png`, the latest also as
`samples.png`) and `latent_curves.png`.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kt_jax import convert, models, paths
from kt_jax.data import builder, sources
from kt_jax.errors import UserError
from kt_jax.stages import checks
from kt_jax.stages.vqgan import check_unit_range, to_uint8

CODES_DIR = "codes"
CHUNK = 256
CURVES = {"next-index cross-entropy (nats)": ["ce_loss"], "next-index accuracy": ["accuracy"]}


def vqgan_dir(path: str) -> str:
  """A vqgan stage's workdir means its `model/`."""
  model = paths.join(path, "model")
  return model if paths.isdir(model) else path


def validate(config) -> None:
  checks.check_teacher_path(config.vqgan_path, "vqgan_path")
  checks.check_model(config.transformer.name, config.transformer.overrides, "transformer")
  check_unit_range(config)
  if not (config.total_steps > 0 or config.epochs > 0):
    raise UserError("Set --config.total_steps or --config.epochs to a positive number.")
  if not config.data.holdout > 0:
    raise UserError("Set --config.data.holdout to a positive number (held-out codes).")
  builder.validate(config)


def load_vqgan(config):
  module, variables = convert.load_pretrained(vqgan_dir(config.vqgan_path))
  if not hasattr(module, "decode_indices"):
    raise UserError(f"vqgan_path={config.vqgan_path} holds a {type(module).__name__}, not a "
                    "VQGAN.")
  return module, variables


def encode_cached(config, workdir: str, name: str, source, vqgan, variables,
                  hflip: bool) -> np.ndarray:
  """(N', h*w) int32 codes of `source` (N' = N, or 2N with mirror images), cached on disk in
  chunks of CHUNK images: chunks already written are read, not recomputed."""
  directory = paths.join(workdir, CODES_DIR)
  os.makedirs(directory, exist_ok=True)
  encode = jax.jit(lambda v, x: vqgan.apply(v, x, method=vqgan.encode)["indices"])
  parts = []
  for start in range(0, len(source), CHUNK):
    path = paths.join(directory, f"{name}_{start:08d}.npy")
    if not os.path.exists(path):
      ids = np.arange(start, min(start + CHUNK, len(source)))
      images = builder.holdout_images(config, sources.SubsetSource(source, ids))
      if hflip:
        images = np.concatenate([images, images[:, :, ::-1]])
      codes = np.asarray(encode(variables, jnp.asarray(images)), np.int32)
      np.save(path + ".tmp.npy", codes.reshape(len(codes), -1))
      os.replace(path + ".tmp.npy", path)  # a chunk is there whole or not at all
    parts.append(np.load(path))
  codes = np.concatenate(parts)
  logging.info("%s codes: %s (cached in %s)", name, codes.shape, directory)
  return codes


class CodeLoader:
  """This process's share of shuffled batches of cached codes; a new permutation per epoch;
  the position (batches drawn) checkpoints with the run."""

  def __init__(self, codes: np.ndarray, global_batch: int, seed: int):
    self.codes, self.batch, self.seed, self.position = codes, global_batch, seed, 0
    self.local = global_batch // jax.process_count()
    self.offset = jax.process_index() * self.local

  def _rows(self, flat):
    n = len(self.codes)
    epochs = flat // n
    out = np.empty_like(flat)
    for epoch in np.unique(epochs):
      perm = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
      out[epochs == epoch] = perm[flat[epochs == epoch] % n]
    return out

  def __iter__(self):
    while True:
      flat = self.position * self.batch + self.offset + np.arange(self.local)
      self.position += 1
      yield {"indices": self.codes[self._rows(flat)]}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def make_evaluate(config, workdir, objective, heldout_codes, vqgan, vq_variables, grid):
  from kt_jax.eval.contact_sheet import save_image_grid
  from kt_jax.models import sampling
  from kt_jax.objectives.latent_transformer import cross_entropy
  module = objective.transformer
  rows = config.samples.rows

  @jax.jit
  def heldout_ce(params, codes):
    logits = module.apply({"params": params}, codes)
    return cross_entropy(logits, codes), jnp.mean(jnp.argmax(logits, -1) == codes)

  decode = jax.jit(lambda v, idx: vqgan.apply(v, idx, method=vqgan.decode_indices))

  def evaluate(step, state):
    params = jax.device_get(state.params["transformer"])
    ce, acc = heldout_ce(params, jnp.asarray(heldout_codes))
    scores = {"ce_loss": float(ce), "accuracy": float(acc)}
    if jax.process_index() == 0:
      prefix = jnp.zeros((rows * rows, module.seq_len), jnp.int32)
      s = config.samples
      indices = sampling.sample(module, {"params": params}, jax.random.key(config.seed + step),
                                prefix, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
      images = to_uint8(decode(vq_variables, indices.reshape(-1, *grid)))
      grid_images = images.reshape(rows, rows, *images.shape[1:])
      directory = paths.join(workdir, "samples")
      os.makedirs(directory, exist_ok=True)
      save_image_grid(grid_images, paths.join(directory, f"step_{step:06d}.png"))
      save_image_grid(grid_images, paths.join(workdir, "samples.png"))
      from kt_jax.train import metrics
      metrics.plot_panels(workdir, CURVES, "latent_curves.png", None, dict(scores, step=step))
    logging.info("step %d: held-out %s", step, scores)
    return scores

  return evaluate


def build_objective(config):
  from kt_jax.objectives.latent_transformer import LatentTransformerObjective
  return LatentTransformerObjective(models.create(
      config.transformer.name, dtype=jnp.dtype(config.compute_dtype),
      **config.transformer.overrides.to_dict()))


def run(config, workdir: str) -> dict:
  from kt_jax.train import trainer
  vqgan, vq_variables = load_vqgan(config)
  size = config.image_size
  if size % vqgan.downsampling:
    raise UserError(f"image_size {size} is not a multiple of the VQGAN's downsampling "
                    f"factor {vqgan.downsampling}.")
  grid = (size // vqgan.downsampling,) * 2
  objective = build_objective(config)
  module = objective.transformer
  if module.seq_len != grid[0] * grid[1] or module.vocab_size != vqgan.codebook_size:
    raise UserError(f"The transformer models {module.seq_len} indices of {module.vocab_size} "
                    f"codes; the VQGAN gives {grid[0]}x{grid[1]} of {vqgan.codebook_size} at "
                    f"image_size {size}: set transformer.overrides.seq_len/vocab_size.")
  train_source, holdout = builder.split_holdout(builder.build_source(config),
                                                config.data.holdout)
  hflip = config.codes.get("hflip", True)
  train_codes = encode_cached(config, workdir, "train", train_source, vqgan, vq_variables,
                              hflip)
  heldout_codes = encode_cached(config, workdir, "heldout", holdout, vqgan, vq_variables, False)
  loader = CodeLoader(train_codes, config.batch_size, config.seed)
  steps_per_epoch = max(1, len(train_codes) // config.batch_size)
  evaluate = make_evaluate(config, workdir, objective, heldout_codes, vqgan, vq_variables, grid)
  last = trainer.train(config, workdir, objective, loader, steps_per_epoch, evaluate)
  after = {}
  eval_file = paths.join(workdir, "eval.jsonl")
  if paths.exists(eval_file):
    after = json.loads(paths.read_text(eval_file).splitlines()[-1])
  # For scale: the entropy of the held-out codes' unigram histogram (a model that ignored
  # context would reach it at best).
  counts = np.bincount(heldout_codes.reshape(-1), minlength=vqgan.codebook_size)
  probs = counts[counts > 0] / counts.sum()
  summary = {"final_metrics": last, "after_training": after,
             "train_codes": list(train_codes.shape), "heldout_codes": list(heldout_codes.shape),
             "heldout_unigram_entropy": float(-np.sum(probs * np.log(probs))),
             "completed": bool(last.get("completed", 1.0))}
  print(f"\nheld-out next-index cross-entropy {after.get('ce_loss', float('nan')):.3f} nats "
        f"(unigram entropy of the held-out codes {summary['heldout_unigram_entropy']:.3f}, "
        f"uniform {np.log(vqgan.codebook_size):.3f})")
  return summary
