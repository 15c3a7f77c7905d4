"""The `rerepresent` stage: IRF's "assembling" (One-to-Transfer-All, section 3).

The downstream few-shot task's TRAIN images (the labelled ones the finetune stage trains on,
drawn by the same `data.*` keys with the same code, `kt_jax.data.fewshot`) go once through a
frozen VQGAN (`vqgan_path`: a `vqgan` stage's workdir or its `model/`): resized to the VQGAN's
resolution (whole image, no crop), encoded to code indices and decoded. The decoded images
are the re-represented training set: the downstream content, drawn in the upstream images'
"vocabulary". Validation and test images are not touched: the paper re-represents the
training images only, and a finetune reading this dataset (`data.train_images`) validates and
tests on the task's original images.

Writes, in the workdir:
  images/<class>/<id>.png  the decoded images (uint8 PNG, lossless, at the VQGAN's resolution)
  manifest.jsonl           one row per image: id (the task's record id), label, class, file
  splits.json              the split, as the finetune stage writes it
  contact_sheet.png        originals (at the VQGAN's resolution) beside their re-representation
Each image is written whole (a temporary file renamed), and a rerun of an interrupted stage
encodes only the images not written yet; a finished stage is skipped (`summary.json`).
"""
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from kt_jax import convert, paths
from kt_jax.data import fewshot, pipeline, sources
from kt_jax.errors import UserError
from kt_jax.stages import checks
from kt_jax.stages.latent_transformer import vqgan_dir
from kt_jax.stages.vqgan import to_uint8

IMAGES_DIR = "images"
MANIFEST = "manifest.jsonl"
CONTACT_SHEET = "contact_sheet.png"
UNIT = (0.5, 0.5, 0.5)  # a VQGAN reads images in [-1, 1]


def validate(config) -> None:
  checks.check_teacher_path(config.vqgan_path, "vqgan_path")
  checks.check_non_negative(config, "image_size")
  checks.check_positive(config, "batch_size")
  d = config.data
  fewshot.check(d.task, d.labels_per_class, d.val_per_class)
  if fewshot.task_kind(d.task) != fewshot.CLASSIFICATION:
    raise UserError(f"data.task={d.task!r}: rerepresent writes classification datasets "
                    "(one folder per class); segmentation masks are not carried.")


def load_vqgan(path: str):
  module, variables = convert.load_pretrained(vqgan_dir(path))
  if not hasattr(module, "decode_indices"):
    raise UserError(f"vqgan_path={path} holds a {type(module).__name__}, not a VQGAN.")
  return module, variables, convert.input_spec(vqgan_dir(path)).image_size


def reconstruct_fn(vqgan):
  """jitted (variables, images in [-1, 1]) -> the VQGAN's decode of its own code indices."""
  def run(variables, images):
    indices = vqgan.apply(variables, images, method=vqgan.encode)["indices"]
    return vqgan.apply(variables, indices, method=vqgan.decode_indices)
  return jax.jit(run)


def image_file(class_name: str, record_id: int) -> str:
  return f"{IMAGES_DIR}/{class_name}/{int(record_id):08d}.png"


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def run(config, workdir: str) -> dict:
  vqgan, variables, native = load_vqgan(config.vqgan_path)
  size = config.image_size or native
  splits = fewshot.build_splits(config.data, config.data.split_seed)
  names = [str(n) for n in splits.class_names]
  is_main = jax.process_index() == 0
  if is_main:
    fewshot.write_record(workdir, splits, {"labels_per_class": config.data.labels_per_class,
                                           "val_per_class": config.data.val_per_class,
                                           "split_seed": config.data.split_seed})
  for name in names:
    os.makedirs(paths.join(workdir, IMAGES_DIR, name), exist_ok=True)
  # Resumption: the records whose image an earlier, interrupted run already wrote are skipped
  # (a file exists only whole). The labels come from the records themselves.
  labels = {int(i): int(splits.train[k]["label"]) for k, i in enumerate(splits.train_ids)}
  todo = [k for k, i in enumerate(splits.train_ids)
          if not paths.exists(paths.join(workdir, image_file(names[labels[int(i)]], i)))]
  logging.info("rerepresent: %d train images of %s at %d px (%d already written)",
               len(splits.train_ids), splits.name, size, len(splits.train_ids) - len(todo))
  reconstruct = reconstruct_fn(vqgan)
  transforms = pipeline.eval_transforms(size, crop_pct=1.0, mean=UNIT, std=UNIT)
  sheet_originals, sheet_recons = [], []
  rows = config.contact_sheet_rows
  bad = 0
  if todo and is_main:
    loader = pipeline.make_eval_loader(sources.SubsetSource(splits.train, todo), transforms,
                                       config.batch_size, shard_index=0, shard_count=1)
    total = -(-len(todo) // config.batch_size)
    for batch in tqdm(loader, total=total, desc="rerepresent", unit="batch"):
      valid = np.asarray(batch["valid"], bool)
      images = np.asarray(batch["image"], np.float32)
      recon = to_uint8(reconstruct(variables, jnp.asarray(images)))
      for j in np.flatnonzero(valid):
        record_id, label = int(batch["id"][j]), int(batch["label"][j])
        target = paths.join(workdir, image_file(names[label], record_id))
        paths.write_bytes(target + ".tmp", _png(recon[j]))
        os.replace(target + ".tmp", target)
      if len(sheet_originals) < 2 * rows:
        sheet_originals.extend(to_uint8(images[valid]))
        sheet_recons.extend(recon[valid])
  manifest = []
  for i in splits.train_ids:
    i = int(i)
    file = image_file(names[labels[i]], i)
    if paths.exists(paths.join(workdir, file)):
      manifest.append({"id": i, "label": labels[i], "class": names[labels[i]], "file": file})
    else:
      bad += 1  # an undecodable original: left out (and counted), as the loaders do
  if is_main:
    paths.write_text(paths.join(workdir, MANIFEST),
                     "".join(json.dumps(row) + "\n" for row in manifest))
    if not sheet_originals and manifest:  # resumed with nothing left: draw from the files
      source = RerepresentedSource(workdir)
      sheet_recons = [source.image(k) for k in range(min(2 * rows, len(source)))]
      sheet_originals = list(_originals(splits, source.ids[:len(sheet_recons)], size))
    if sheet_originals:
      _contact_sheet(workdir, sheet_originals[:2 * rows], sheet_recons[:2 * rows])
  print(f"\nrerepresent: {len(manifest)} train images of {splits.name} re-represented at "
        f"{size} px in {paths.join(workdir, IMAGES_DIR)}" + (f" ({bad} undecodable)" if bad
                                                            else ""))
  return {"task": splits.name, "images": len(manifest), "undecodable": bad, "image_size": size,
          "classes": names, "vqgan": vqgan_dir(config.vqgan_path)}


def _originals(splits, ids, size):
  index = {int(i): k for k, i in enumerate(splits.train_ids)}
  subset = sources.SubsetSource(splits.train, [index[int(i)] for i in ids])
  loader = pipeline.make_eval_loader(subset, pipeline.eval_transforms(
      size, crop_pct=1.0, mean=UNIT, std=UNIT), max(len(ids), 1), shard_index=0, shard_count=1)
  batch = next(iter(loader))
  return to_uint8(np.asarray(batch["image"])[np.asarray(batch["valid"], bool)])


def _contact_sheet(workdir: str, originals, recons) -> str:
  """Original beside re-represented, two pairs per row."""
  from kt_jax.eval.contact_sheet import save_image_grid
  pairs = np.stack([np.asarray(originals), np.asarray(recons)], axis=1)
  n = len(pairs)
  if n >= 4:
    n -= n % 2
    pairs = np.concatenate([pairs[: n // 2], pairs[n // 2:n]], axis=1)
  labels = ["original", "re-represented"] * (pairs.shape[1] // 2)
  return save_image_grid(pairs, paths.join(workdir, CONTACT_SHEET), labels=labels)


class RerepresentedSource:
  """The images a rerepresent stage wrote, in manifest order: records {"image": PNG bytes,
  "label", "id"} with the task's own ids (Decode turns the bytes into pixels)."""

  def __init__(self, workdir: str):
    manifest = paths.join(workdir, MANIFEST)
    if not paths.exists(manifest):
      raise UserError(f"{workdir} holds no {MANIFEST}: not a finished rerepresent stage.")
    self.root = workdir
    rows = [json.loads(line) for line in paths.read_text(manifest).splitlines() if line]
    self.ids = np.asarray([r["id"] for r in rows], np.int64)
    self.labels = np.asarray([r["label"] for r in rows], np.int64)
    self.files = [r["file"] for r in rows]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    index = int(index)
    data = sources.read_bytes(paths.join(self.root, self.files[index]))
    return {"image": data, "label": int(self.labels[index]), "id": int(self.ids[index])}

  def image(self, index: int) -> np.ndarray:
    from kt_jax.data.transforms import decode_image
    return decode_image(self[index]["image"])

  def describe(self, index: int) -> str:
    return paths.join(self.root, self.files[int(index)])


def train_source(workdir: str, splits: fewshot.Splits) -> RerepresentedSource:
  """The re-represented images of exactly `splits`' train records (same ids, same labels), for
  the finetune stage's `data.train_images`; another split is one error saying which."""
  source = RerepresentedSource(workdir)
  want = {int(i): int(splits.train[k]["label"]) for k, i in enumerate(splits.train_ids)}
  have = dict(zip(source.ids.tolist(), source.labels.tolist()))
  extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
  # Missing ids are allowed only as the originals rerepresent could not decode (and counted).
  if extra or not have or any(have[i] != want[i] for i in have):
    raise UserError(
        f"data.train_images={workdir} re-represents another train split than this finetune's "
        f"(task {splits.name}: {len(missing)} of its train ids missing, {len(extra)} others, "
        f"e.g. {(missing or extra or ['a label'])[:3]}): run rerepresent with the same "
        "data.task, labels_per_class, val_per_class, split_seed and task_options.")
  if missing:
    logging.warning("%s: %d train images were undecodable and are not re-represented.",
                    workdir, len(missing))
  return source
