"""The `digg_generate` stage: Downstream Image-Guided Generation ("One to Transfer All", 3.2).

For each image of the few-shot task's train split (`data.task`, `labels_per_class`,
`val_per_class`, `split_seed`: the split `finetune` draws), N = `samples_per_image` times:
1. encode it with the frozen VQGAN (`vqgan_path`) into a grid of code indices;
2. mask a region of the grid (`mask.kind`: `bottom` half, `right` half, or a random `box`
   whose sides are `mask.box_min`..`mask.box_max` of the grid's);
3. complete the masked indices in raster order with the latent transformer
   (`transformer_path`; `sampling.temperature`, `top_k`, `top_p`), every visible index kept:
   the visible prefix primes the key/value cache, and visible indices after a masked one are
   forced, not drawn (`kt_jax.models.sampling`);
4. decode the grid with the VQGAN.

Work is cut into fixed batches of `batch_size` (image, sample) pairs, image-major. Each
sample's random key is derived from (seed, image, sample) alone, and a batch is written whole
(its PNGs, then `codes/batch_N.npz` as the marker that it is done), so a run killed at any point
and run again skips the finished batches and writes the same images an uninterrupted run
writes. `stop_after_batches` ends an invocation on purpose (resumable).

Outputs: `images/` (flat folder of PNGs `<image>_<sample>.png`; a `distill_feature` transfer
set: `data.source=image_folder`, `data.path=<workdir>/images`), `originals/` (the few
downstream images themselves, same format: the "few raw images" baseline's transfer set),
`samples.jsonl` (file, image, sample, source id and label), `codes/` (per batch: the encoded
and the completed indices and the visible mask), `splits.json`, and `contact_sheet.png`
(per row: the original, its VQGAN reconstruction, the visible part, then its samples).
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kt_jax import convert, paths
from kt_jax.data import builder, fewshot
from kt_jax.errors import UserError
from kt_jax.stages import checks
from kt_jax.stages.latent_transformer import vqgan_dir
from kt_jax.stages.vqgan import check_unit_range, to_uint8

MASKS = ("bottom", "right", "box")
IMAGES_DIR, ORIGINALS_DIR, CODES_DIR = "images", "originals", "codes"
SAMPLES_FILE, SHEET_FILE = "samples.jsonl", "contact_sheet.png"


def validate(config) -> None:
  for key in ("vqgan_path", "transformer_path"):  # a stage's workdir means its model/
    path = config[key]
    checks.check_teacher_path(path if checks.is_deferred(path) else vqgan_dir(path), key)
  checks.check_choice(config.mask.kind, "mask.kind", MASKS)
  checks.check_positive(config, "image_size", "batch_size", "samples_per_image")
  checks.check_non_negative(config, "sampling.temperature", "sampling.top_k",
                            "stop_after_batches", "contact_sheet.rows",
                            "contact_sheet.samples")
  if not 0 < config.sampling.top_p <= 1:
    raise UserError(f"config.sampling.top_p must be in (0, 1], got {config.sampling.top_p}.")
  if not 0 < config.mask.box_min <= config.mask.box_max <= 1:
    raise UserError("config.mask.box_min and box_max must satisfy 0 < box_min <= box_max <= 1 "
                    f"(fractions of the grid's side); got {config.mask.box_min}, "
                    f"{config.mask.box_max}.")
  check_unit_range(config)
  fewshot.check(config.data.task, config.data.labels_per_class, config.data.val_per_class)


def load_models(config):
  """(vqgan, its variables, transformer, its variables, grid (h, w)); shapes checked."""
  vqgan, vq_variables = convert.load_pretrained(vqgan_dir(config.vqgan_path))
  if not hasattr(vqgan, "decode_indices"):
    raise UserError(f"vqgan_path={config.vqgan_path} holds a {type(vqgan).__name__}, not a "
                    "VQGAN.")
  transformer, tf_variables = convert.load_pretrained(vqgan_dir(config.transformer_path))
  if not hasattr(transformer, "prefill"):
    raise UserError(f"transformer_path={config.transformer_path} holds a "
                    f"{type(transformer).__name__}, not a latent transformer.")
  size = config.image_size
  if size % vqgan.downsampling:
    raise UserError(f"image_size {size} is not a multiple of the VQGAN's downsampling factor "
                    f"{vqgan.downsampling}.")
  grid = (size // vqgan.downsampling,) * 2
  if transformer.seq_len != grid[0] * grid[1] or transformer.vocab_size != vqgan.codebook_size:
    raise UserError(f"The transformer models {transformer.seq_len} indices of "
                    f"{transformer.vocab_size} codes; the VQGAN gives {grid[0]}x{grid[1]} of "
                    f"{vqgan.codebook_size} at image_size {size}.")
  return vqgan, vq_variables, transformer, tf_variables, grid


def visible_mask(kind: str, grid: tuple[int, int], rng: np.random.Generator | None = None,
                 box=(0.25, 0.5)) -> np.ndarray:
  """(h*w,) bool, raster order: True where the index is kept. `bottom`: the top half stays
  (a prefix); `right`: the left half stays; `box`: everything but a random box, its sides
  drawn from `box` (fractions of the grid's) and its place uniform, from `rng`."""
  h, w = grid
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  if kind == "bottom":
    visible = rows < h // 2
  elif kind == "right":
    visible = cols < w // 2
  elif kind == "box":
    bh = int(rng.integers(max(1, round(box[0] * h)), max(1, round(box[1] * h)) + 1))
    bw = int(rng.integers(max(1, round(box[0] * w)), max(1, round(box[1] * w)) + 1))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    visible = ~((rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw))
  else:
    raise ValueError(f"Unknown mask kind {kind!r}; one of {MASKS}.")
  return visible.reshape(-1)


def sample_key(seed: int, image: int, sample: int):
  """The key of one sample: from (seed, image, sample) alone, never from a running key."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), image), sample)


@jax.jit
def sample_keys(seed, images, samples):
  """`sample_key` of each (images[k], samples[k]) pair, as one (B,) key array."""
  return jax.vmap(sample_key, in_axes=(None, 0, 0))(seed, images, samples)


def batch_masks(config, grid, pairs) -> np.ndarray:
  """(B, h*w) visible masks of (image, sample) pairs; a box from (seed, image, sample)."""
  m = config.mask
  return np.stack([visible_mask(m.kind, grid, np.random.default_rng([config.seed, i, j]),
                                (m.box_min, m.box_max)) for i, j in pairs])


def complete(transformer, variables, config, keys, codes, visible) -> np.ndarray:
  """(B, h*w) codes with every visible index kept and the rest drawn by `transformer`, each
  row from its own key (`keys` (B,)); the visible prefix all rows share primes the cache,
  later visible indices are forced. `sampling.sample`'s compilation is shared by every call
  with the same shapes and settings."""
  from kt_jax.models import sampling
  s = config.sampling
  masked = ~np.asarray(visible, bool)
  num_given = int(min(np.argmax(row) if row.any() else len(row) for row in masked))
  return np.asarray(sampling.sample(transformer, variables, keys, jnp.asarray(codes), num_given,
                                    temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                    given=jnp.asarray(visible)))


@functools.partial(jax.jit, static_argnums=0)
def _encode(vqgan, variables, images):
  return vqgan.apply(variables, images, method=vqgan.encode)["indices"]


@functools.partial(jax.jit, static_argnums=0)
def _decode(vqgan, variables, indices):
  return vqgan.apply(variables, indices, method=vqgan.decode_indices)


def _write_png(path: str, image: np.ndarray) -> None:
  from PIL import Image
  directory, name = os.path.split(path)
  tmp = os.path.join(directory, f".{name}.tmp")  # hidden: never read as a transfer image
  Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
  os.replace(tmp, path)  # a file is there whole or not at all


def _save_npz(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def file_name(image: int, sample: int) -> str:
  return f"{image:05d}_{sample:03d}.png"


def _originals(splits) -> tuple[list, list]:
  """The train split's images (uint8 RGB, as decoded) and labels."""
  from kt_jax.data import transforms
  records = [splits.train[i] for i in range(len(splits.train))]
  return ([transforms.decode_image(r["image"]) for r in records],
          [int(r["label"]) for r in records])


def encode_images(config, source, vqgan, variables) -> tuple[np.ndarray, np.ndarray]:
  """((N, h*w) int32 code indices, (N, size, size, 3) [-1, 1] images) of `source`'s images
  resized to `image_size` (all at once: a few-shot split is small)."""
  images = builder.holdout_images(config, source)
  if len(images) != len(source):
    raise UserError(f"{len(source) - len(images)} downstream image(s) do not decode.")
  codes = np.asarray(_encode(vqgan, variables, jnp.asarray(images)), np.int32)
  return codes.reshape(len(codes), -1), images


def run(config, workdir: str) -> dict:
  from tqdm import tqdm
  vqgan, vq_variables, transformer, tf_variables, grid = load_models(config)
  splits = fewshot.build_splits(config.data, config.data.split_seed)
  if jax.process_index() == 0:
    fewshot.write_record(workdir, splits, {"labels_per_class": config.data.labels_per_class,
                                           "val_per_class": config.data.val_per_class,
                                           "split_seed": config.data.split_seed})
  originals, labels = _originals(splits)
  codes, inputs = encode_images(config, splits.train, vqgan, vq_variables)
  n_images, n_samples = len(codes), config.samples_per_image
  pairs = [(i, j) for i in range(n_images) for j in range(n_samples)]
  batch = config.batch_size
  n_batches = -(-len(pairs) // batch)
  for name in (IMAGES_DIR, ORIGINALS_DIR, CODES_DIR):
    os.makedirs(paths.join(workdir, name), exist_ok=True)
  for i, image in enumerate(originals):
    path = paths.join(workdir, ORIGINALS_DIR, file_name(i, 0))
    if not os.path.exists(path):
      _write_png(path, image)

  decode = functools.partial(_decode, vqgan)
  done = [b for b in range(n_batches)
          if os.path.exists(paths.join(workdir, CODES_DIR, f"batch_{b:06d}.npz"))]
  todo = [b for b in range(n_batches) if b not in set(done)]
  logging.info("DIGG: %d images x %d samples = %d in %d batches (%d done); grid %dx%d, mask %s",
               n_images, n_samples, len(pairs), n_batches, len(done), *grid, config.mask.kind)
  ran = 0
  bar = tqdm(total=n_batches, initial=len(done), desc="digg", unit="batch")
  for b in todo:
    if config.stop_after_batches and ran >= config.stop_after_batches:
      break
    chunk = pairs[b * batch:(b + 1) * batch]
    padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one shape: one compilation
    image_ids = np.array([i for i, _ in padded])
    keys = sample_keys(config.seed, image_ids, np.array([j for _, j in padded]))
    visible = batch_masks(config, grid, padded)
    completed = complete(transformer, tf_variables, config, keys, codes[image_ids], visible)
    pixels = to_uint8(decode(vq_variables, jnp.asarray(completed.reshape(-1, *grid))))
    for (i, j), image in zip(chunk, pixels):
      _write_png(paths.join(workdir, IMAGES_DIR, file_name(i, j)), image)
    n = len(chunk)
    _save_npz(paths.join(workdir, CODES_DIR, f"batch_{b:06d}.npz"),
              pairs=np.array(chunk), encoded=codes[image_ids[:n]],
              completed=completed[:n], visible=visible[:n])
    ran += 1
    bar.update(1)
  bar.close()
  finished = len(done) + ran
  if finished < n_batches:
    logging.info("DIGG stopped after %d of %d batches (stop_after_batches); run again to "
                 "continue.", finished, n_batches)
    return {"completed": False, "batches_done": finished, "batches": n_batches}

  records = [{"file": paths.join(IMAGES_DIR, file_name(i, j)), "image": i, "sample": j,
              "source_id": int(splits.train_ids[i]), "label": labels[i]} for i, j in pairs]
  paths.write_text(paths.join(workdir, SAMPLES_FILE),
                   "".join(json.dumps(r) + "\n" for r in records))
  sheet = write_contact_sheet(config, workdir, inputs,
                              lambda idx: _decode_padded(decode, vq_variables, idx, batch), grid,
                              codes)
  visible_share = float(np.mean(batch_masks(config, grid, pairs[:batch])))
  summary = {"images": n_images, "samples_per_image": n_samples, "generated": len(pairs),
             "batches": n_batches, "grid": list(grid), "mask": config.mask.kind,
             "visible_share": visible_share, "transfer_set": paths.join(workdir, IMAGES_DIR),
             "originals": paths.join(workdir, ORIGINALS_DIR), "contact_sheet": sheet}
  print(f"\nDIGG: {len(pairs)} images ({n_images} downstream x {n_samples}) in "
        f"{paths.join(workdir, IMAGES_DIR)}; contact sheet {sheet}")
  return summary


def _decode_padded(decode, variables, indices, batch: int) -> np.ndarray:
  """uint8 images of (n, h, w) indices, decoded `batch` at a time (the shape compiled once)."""
  out = []
  for start in range(0, len(indices), batch):
    chunk = indices[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    out.append(to_uint8(decode(variables, jnp.asarray(padded)))[:len(chunk)])
  return np.concatenate(out)


def write_contact_sheet(config, workdir, inputs, decode, grid, codes) -> str:
  """Rows: the original (at image_size), its reconstruction (`decode`: (n, h, w) indices ->
  uint8 images), the visible part (masked region grey), then its first samples, read back
  from `images/`."""
  rows = min(config.contact_sheet.rows, len(codes))
  shown = min(config.contact_sheet.samples, config.samples_per_image)
  path = paths.join(workdir, SHEET_FILE)
  if not rows:
    return ""
  from PIL import Image
  from kt_jax.eval.contact_sheet import save_image_grid
  recon = decode(codes[:rows].reshape(-1, *grid))
  originals = to_uint8(inputs[:rows])
  cell = config.image_size // grid[0]
  sheet = []
  for i in range(rows):
    visible = batch_masks(config, grid, [(i, 0)])[0].reshape(grid)
    pixel_mask = np.kron(visible, np.ones((cell, cell), bool))[..., None]
    masked = np.where(pixel_mask, originals[i], 128).astype(np.uint8)
    samples = [np.asarray(Image.open(paths.join(workdir, IMAGES_DIR, file_name(i, j))))
               for j in range(shown)]
    sheet.append([originals[i], recon[i], masked] + samples)
  labels = ["original", "VQGAN", "visible (sample 0)"] + [f"sample {j}" for j in range(shown)]
  save_image_grid(np.asarray(sheet), path, labels=labels)
  return path
