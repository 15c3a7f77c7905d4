"""The `retrieve` stage: crops of few-shot labelled images query the gallery index; a
query-balanced selection of gallery crops becomes the transfer set.

Writes `manifest.jsonl` (read by `data.source = "manifest"`, crops cut at load time),
`contact_sheet.png` (queries beside what they retrieved; green border: a gallery image whose
metadata label equals the query's) and a summary with per-query counts, what the distinct-
image and duplicate rules removed, precision against gallery metadata when it has labels,
and the time of each phase. The model and its input size are the embed stage's own (read
from its config.json), so queries and gallery live in one feature space.
"""
import json
import os
import time

import numpy as np
from absl import logging

from kt_jax import convert, paths
from kt_jax.data import shipped, sources, transforms
from kt_jax.errors import UserError
from kt_jax.stages import checks

QUERY_SOURCES = ("mnist_fewshot", "image_folder")


def validate(config) -> None:
  checks.check_positive(config, "quota", "contact_sheet.rows", "contact_sheet.k")
  checks.check_non_negative(config, "search_k")
  checks.check_choice(config.queries.source, "queries.source", QUERY_SOURCES)
  if not 0 < config.duplicate_threshold <= 1:
    raise UserError(f"config.duplicate_threshold must be in (0, 1] (1: off), got "
                    f"{config.duplicate_threshold}.")
  for key in ("embeddings", "index"):
    value = config[key]
    if not value:
      raise UserError(f"Set --config.{key}=<workdir of the {key.rstrip('s')} stage>.")
    if not checks.is_deferred(value) and not paths.exists(value):
      raise UserError(f"config.{key}={value} does not exist.")
  if config.queries.source == "image_folder" and not os.path.isdir(config.queries.path):
    raise UserError(f"config.queries.path={config.queries.path!r} is not a folder of images.")


def query_images(config) -> tuple[list[np.ndarray], np.ndarray]:
  """(uint8 RGB images, labels) of the labelled images the queries are cut from."""
  q = config.queries
  if q.source == "mnist_fewshot":
    images, labels, _, _ = shipped.mnist_fewshot(q.labels_per_class, 0, q.seed)
    return list(images), labels
  source = sources.ImageFolderSource(q.path)
  return [transforms.decode_image(source[i]["image"]) for i in range(len(source))], source.labels


def _embed_config(embeddings: str) -> dict:
  return json.loads(paths.read_text(paths.join(embeddings, "config.json")))


def _sheet(path, rows, selection, query_images_, query_image_of, query_labels, meta_label,
           count, k, cell=64):
  """One row per class (the first query of each label, then more), up to `count` rows."""
  from kt_jax.eval import contact_sheet  # pylint: disable=g-import-not-at-top
  from kt_jax.retrieval import manifest  # pylint: disable=g-import-not-at-top
  order = np.argsort(np.asarray([query_labels[query_image_of[q]] for q in
                                 range(len(query_image_of))]), kind="stable")
  by_label = {}
  for q in order:
    by_label.setdefault(int(query_labels[query_image_of[q]]), []).append(int(q))
  chosen = []
  while len(chosen) < count and any(by_label.values()):
    for label in sorted(by_label):
      if by_label[label] and len(chosen) < count:
        chosen.append(by_label[label].pop(0))
  resize = lambda im: shipped.resize_images(im[None], cell)[0]
  bank, bank_labels, neighbours = [], [], []
  for q in chosen:
    mine = np.flatnonzero(selection.query == q)[:k]
    row = []
    for s in mine:
      try:
        bank.append(resize(manifest.load_crop(rows[s])))
      except Exception:  # pylint: disable=broad-except
        bank.append(np.zeros((cell, cell, 3), np.uint8))
      bank_labels.append(meta_label(s))
      row.append(len(bank) - 1)
    neighbours.append(row + [row[-1] if row else 0] * (k - len(row)))
  if not bank:
    return None
  queries = [resize(query_images_[q]) for q in chosen]
  return contact_sheet.save_neighbour_sheet(
      np.stack(queries), np.stack(bank), np.asarray(neighbours), path,
      query_labels=np.asarray([query_labels[query_image_of[q]] for q in chosen]),
      bank_labels=np.asarray(bank_labels), cell_pixels=cell)


def run(config, workdir: str) -> dict:
  # pylint: disable=g-import-not-at-top
  from kt_jax.retrieval import balanced, crops, embedder, index, manifest, store
  from kt_jax.stages import embed, index as index_stage  # pylint: disable=g-import-not-at-top
  timing = {}
  clock = time.perf_counter()

  def phase(name):
    nonlocal clock
    now = time.perf_counter()
    timing[name] = round(now - clock, 2)
    clock = now

  embed_cfg = _embed_config(config.embeddings)
  directory = paths.join(config.embeddings, embed.EMBEDDINGS)
  vectors, table = store.load(directory)
  info = json.loads(paths.read_text(paths.join(config.index, index_stage.INFO_FILE)))
  if (info.get("shard_names", store.done(directory)) != store.done(directory)
      or info["vectors"] != len(vectors)):
    raise UserError(f"The index in {config.index} was built from other embedding shards than "
                    f"{directory} now holds: rerun the index stage.")
  faiss_index = index.load(paths.join(config.index, index_stage.INDEX_FILE))
  index.set_search(faiss_index, info["nprobe"], info["ef_search"])
  phase("load_gallery")

  images, labels = query_images(config)
  boxes = crops.boxes(config.query_crops.whole, config.query_crops.grid,
                      tuple(config.query_crops.scales))
  model_path = embed_cfg["teacher"]["path"]
  module, variables = convert.load_pretrained(model_path)
  spec = convert.input_spec(model_path, embed_cfg["image_size"])
  embed_fn = embedder.Embedder(module, variables, spec, embed_cfg["embedding"],
                               embed_cfg["batch_size"])
  query_crops = np.concatenate([crops.cut_resized(im, boxes, spec.image_size) for im in images])
  queries = embed_fn(query_crops)
  query_image_of = np.repeat(np.arange(len(images)), len(boxes))
  phase("embed_queries")

  k = min(config.search_k or 10 * config.quota, len(vectors))
  scores, ids = index.search(faiss_index, queries, k)
  phase("search")

  threshold = None if config.duplicate_threshold >= 1 else config.duplicate_threshold
  selection = balanced.select(scores, ids, table["image"], config.quota,
                              balanced=config.balanced, distinct_images=config.distinct_images,
                              vectors=vectors, duplicate_threshold=threshold)
  phase("select")

  query_labels = labels[query_image_of]
  rows = []
  for q, crop, score, rank in zip(selection.query, selection.crop, selection.score,
                                  selection.rank):
    image = int(table["image"][crop])
    rows.append({"kind": table["kind"][image], "source": table["source"][image],
                 "key": table["key"][image], "offset": table["offset"][image],
                 "size": table["size"][image], "box": table["box"][crop].round(6).tolist(),
                 "query": int(q), "query_image": int(query_image_of[q]),
                 "query_label": int(query_labels[q]), "score": round(float(score), 5),
                 "rank": int(rank), "meta": table["meta"][image]})
  manifest_path = paths.join(workdir, manifest.MANIFEST)
  manifest.write(manifest_path, rows)
  phase("manifest")

  meta_label = lambda s: int(rows[s]["meta"].get("label", -1))
  sheet = _sheet(paths.join(workdir, "contact_sheet.png"), rows, selection, images,
                 query_image_of, labels, meta_label, config.contact_sheet.rows,
                 config.contact_sheet.k)
  phase("contact_sheet")

  per_query = selection.per_query(len(queries))
  summary = {
      "gallery_images": len(table["key"]), "gallery_crops": len(vectors),
      "query_images": len(images), "queries": len(queries), "quota": config.quota,
      "balanced": config.balanced, "searched_k": k, "selected": len(rows),
      "distinct_images": len({(r["source"], r["key"]) for r in rows}),
      "per_query_min": int(per_query.min()), "per_query_max": int(per_query.max()),
      "per_query_mean": round(float(per_query.mean()), 3),
      "queries_short_of_quota": int((per_query < config.quota).sum()),
      "skipped_image_taken": selection.image_taken,
      "duplicates_removed": selection.duplicates,
      "phase_seconds": timing, "manifest": manifest_path, "contact_sheet": sheet}
  if any("label" in m or "kind" in m for m in table["meta"]):
    summary["precision"] = balanced.precision(selection, query_labels, table["image"],
                                              table["meta"], config.report_kind or None)
  logging.info("retrieve: %s", summary)
  print(f"\nretrieve ({'balanced' if config.balanced else 'plain top-K'}): {len(rows)} gallery "
        f"crops for {len(queries)} queries (quota {config.quota}; per query "
        f"{summary['per_query_min']}-{summary['per_query_max']}); "
        f"{selection.duplicates} near-duplicates dropped; manifest {manifest_path}"
        + (f"; precision {summary['precision']}" if "precision" in summary else ""))
  return summary
