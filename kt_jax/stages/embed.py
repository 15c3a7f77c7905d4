"""The `embed` stage: every gallery image at crop level -> L2-normalised vectors on disk.

Each gallery unit (a tar shard, or a run of a folder/ArrayRecord source; `retrieval.gallery`)
becomes one embedding shard in `<workdir>/embeddings/` (`retrieval.store`). Units are dealt
to processes round-robin; each process embeds its own on its own devices. A rerun skips the
units already written, so a killed run continues where it stopped: nothing is embedded twice
and nothing is lost (a unit is written whole or not at all). `stop_after_shards` ends an
invocation early on purpose, resumably.

The summary puts the images/s of the whole stage (read, decode, crop, model, write) beside
the model alone, so one sees whether the input or the model bounds the stage.
"""
import time

import jax
import numpy as np
from absl import logging

from kt_jax import convert, paths
from kt_jax.data import transforms
from kt_jax.errors import UserError
from kt_jax.retrieval import crops, gallery, store
from kt_jax.stages import checks

EMBEDDINGS = "embeddings"


def validate(config) -> None:
  checks.check_teacher_path(config.teacher.path, "teacher.path")
  checks.check_choice(config.embedding, "embedding", checks.FEATURES[:2])
  checks.check_choice(config.gallery.source, "gallery.source", gallery.KINDS)
  checks.check_positive(config, "batch_size", "gallery.images_per_unit")
  checks.check_non_negative(config, "image_size", "stop_after_shards", "crops.grid")
  path = config.gallery.path
  if not path:
    raise UserError("Set --config.gallery.path=<folder of tar shards, image folder or "
                    "ArrayRecord directory>.")
  if not checks.is_deferred(path) and "://" not in path and not paths.exists(path):
    raise UserError(f"config.gallery.path={path} does not exist.")
  try:
    crops.boxes(config.crops.whole, config.crops.grid, tuple(config.crops.scales))
  except ValueError as e:
    raise UserError(f"config.crops: {e}") from None


def crop_set(config) -> np.ndarray:
  return crops.boxes(config.crops.whole, config.crops.grid, tuple(config.crops.scales))


def embed_unit(unit: gallery.Unit, embedder, boxes: np.ndarray, counts: dict):
  """(vectors, table) of one unit; undecodable images are counted in counts["bad_images"]."""
  size = embedder.spec.image_size
  images = {"kind": [], "source": [], "key": [], "offset": [], "size": [], "meta": []}
  pending, vectors = [], []
  for sample in unit.samples(counts):
    try:
      image = transforms.decode_image(sample["image"])
    except Exception as e:  # pylint: disable=broad-except
      counts["bad_images"] = counts.get("bad_images", 0) + 1
      logging.warning("%s %s: undecodable (%s); skipped", sample["source"], sample["key"], e)
      continue
    for column in images:
      images[column].append(sample[column])
    pending.append(crops.cut_resized(image, boxes, size))
    if sum(len(p) for p in pending) >= embedder.batch_size:
      vectors.append(embedder(np.concatenate(pending)))
      pending = []
  if pending:
    vectors.append(embedder(np.concatenate(pending)))
  count = len(images["key"])
  table = {"images": images,
           "crop_image": np.repeat(np.arange(count), len(boxes)).tolist(),
           "crop_box": np.tile(boxes, (count, 1)).round(6).tolist()}
  return (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)), table


def run(config, workdir: str) -> dict:
  from kt_jax.retrieval import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  boxes = crop_set(config)
  units = gallery.units(config.gallery.source, config.gallery.path, config.gallery.split,
                        config.gallery.images_per_unit)
  mine = units[jax.process_index()::jax.process_count()]
  out_dir = paths.join(workdir, EMBEDDINGS)
  finished = set(store.done(out_dir))
  todo = [u for u in mine if u.name not in finished]
  logging.info("embed: %d gallery units, %d for this process, %d already embedded",
               len(units), len(mine), len(mine) - len(todo))
  module, variables = convert.load_pretrained(config.teacher.path)
  spec = convert.input_spec(config.teacher.path, config.image_size)
  embedder = embedder_lib.Embedder(module, variables, spec, config.embedding,
                                   config.batch_size)
  embedder.warm_up()
  counts = {"images": 0, "crops": 0, "bad_images": 0, "skipped": 0, "truncated_shards": 0}
  start = time.perf_counter()
  for done_now, unit in enumerate(todo):
    if config.stop_after_shards and done_now == config.stop_after_shards:
      return {"completed": False, "units_embedded": done_now,
              "units_left": len(todo) - done_now}
    vectors, table = embed_unit(unit, embedder, boxes, counts)
    store.write_shard(out_dir, unit.name, vectors, table)
    counts["images"] += len(table["images"]["key"])
    counts["crops"] += len(vectors)
    logging.info("embed: unit %s, %d images (%d/%d units)", unit.name,
                 len(table["images"]["key"]), done_now + 1, len(todo))
  seconds = time.perf_counter() - start
  per_second = lambda n, s: round(n / s, 1) if s > 0 else None
  summary = dict(
      counts, units=len(units), units_this_process=len(mine), units_embedded=len(todo),
      crops_per_image=len(boxes), boxes=boxes.tolist(), image_size=spec.image_size,
      model=config.teacher.path, devices=len(jax.local_devices()),
      stage_seconds=round(seconds, 2), model_seconds=round(embedder.seconds, 2),
      images_per_s_stage=per_second(counts["images"], seconds),
      images_per_s_model=per_second(counts["images"], embedder.seconds),
      bound="model" if embedder.seconds >= seconds / 2 else "input")
  print(f"\nembed: {counts['images']} images, {counts['crops']} crops "
        f"({len(boxes)} per image) at {spec.image_size} px in {seconds:.1f} s: "
        f"{summary['images_per_s_stage']} img/s for the stage, "
        f"{summary['images_per_s_model']} img/s for the model alone ({summary['bound']}-bound); "
        f"{counts['bad_images']} undecodable, {counts['skipped']} corrupt samples skipped")
  return summary
