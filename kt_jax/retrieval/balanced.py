"""Query-balanced selection of a transfer set from nearest-neighbour lists (pure NumPy).

Every query (a crop of a labelled image) gets the same quota of distinct gallery crops,
taken round-robin: in each round every query still short of its quota takes its best
remaining candidate, so no query's easy neighbours crowd out another's. A gallery image
already taken (for any query) is skipped, and a crop whose similarity to one already taken
exceeds `duplicate_threshold` is dropped as a near-duplicate. `balanced=False` is the
paper's ablation: the globally most similar (query, crop) pairs, whatever the query.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass
class Selection:
  query: np.ndarray      # (S,) query row of each selected crop
  crop: np.ndarray       # (S,) gallery crop id
  score: np.ndarray      # (S,) similarity to its query
  rank: np.ndarray       # (S,) rank in its query's neighbour list
  image_taken: int       # candidates skipped: their crop or image was already selected
  duplicates: int        # candidates dropped as near-duplicates of a selected crop

  def per_query(self, num_queries: int) -> np.ndarray:
    return np.bincount(self.query, minlength=num_queries)


class _Taker:
  """Accepts candidates one at a time under the distinct-image and duplicate rules."""

  def __init__(self, crop_image, vectors, distinct_images, duplicate_threshold, capacity):
    self.crop_image, self.vectors = crop_image, vectors
    self.distinct, self.threshold = distinct_images, duplicate_threshold
    self.images = set()
    self.crops = set()
    self.chosen = None if vectors is None or duplicate_threshold is None else np.zeros(
        (capacity, vectors.shape[1]), np.float32)
    self.count = self.image_taken = self.duplicates = 0
    self.rows = []

  def offer(self, query: int, rank: int, crop: int, score: float) -> bool:
    if crop < 0:
      return False
    image = int(self.crop_image[crop])
    if crop in self.crops or (self.distinct and image in self.images):
      self.image_taken += 1
      return False
    if self.chosen is not None and self.count:
      vector = np.asarray(self.vectors[crop], np.float32)
      if float(np.max(self.chosen[:self.count] @ vector)) > self.threshold:
        self.duplicates += 1
        return False
    if self.chosen is not None:
      self.chosen[self.count] = self.vectors[crop]
    self.count += 1
    self.images.add(image)
    self.crops.add(crop)
    self.rows.append((query, crop, score, rank))
    return True

  def selection(self) -> Selection:
    rows = np.asarray(self.rows, np.float64).reshape(-1, 4)
    return Selection(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
                     rows[:, 2].astype(np.float32), rows[:, 3].astype(np.int64),
                     self.image_taken, self.duplicates)


def select(scores: np.ndarray, ids: np.ndarray, crop_image: np.ndarray, quota: int, *,
           balanced: bool = True, distinct_images: bool = True, vectors=None,
           duplicate_threshold: float | None = None) -> Selection:
  """Selects up to `quota` crops per query (balanced) or `quota * Q` crops overall (not).

  scores, ids: (Q, K) neighbour lists, best first (id -1: none); crop_image: (N,) the image
  of each gallery crop; vectors: (N, D) unit vectors (any indexable), needed only for the
  duplicate rule. A query whose K candidates run out gets fewer than `quota`.
  """
  scores, ids = np.asarray(scores), np.asarray(ids)
  num_queries, k = ids.shape
  taker = _Taker(np.asarray(crop_image), vectors, distinct_images, duplicate_threshold,
                 quota * num_queries)
  if balanced:
    pointer, taken = np.zeros(num_queries, np.int64), np.zeros(num_queries, np.int64)
    for _ in range(quota):
      for q in range(num_queries):
        while taken[q] < quota and pointer[q] < k:
          r = pointer[q]
          pointer[q] += 1
          if taker.offer(q, int(r), int(ids[q, r]), float(scores[q, r])):
            taken[q] += 1
            break
  else:
    order = np.argsort(-scores, axis=None, kind="stable")
    for flat in order:
      if taker.count == quota * num_queries:
        break
      q, r = divmod(int(flat), k)
      taker.offer(q, r, int(ids[q, r]), float(scores[q, r]))
  return taker.selection()


def precision(selection: Selection, query_labels: np.ndarray, crop_image: np.ndarray,
              image_meta: list[dict], kind: str | None = None) -> dict:
  """Against gallery metadata: the share of selected images whose meta "label" equals their
  query's label, and of each meta "kind" (e.g. how many retrieved images are digits)."""
  metas = [image_meta[int(crop_image[c])] for c in selection.crop]
  if not metas:
    return {"label_precision": 0.0, "kinds": {}}
  labels = np.asarray([m.get("label", -1) for m in metas])
  kinds, counts = np.unique([str(m.get("kind", "?")) for m in metas], return_counts=True)
  out = {"label_precision": float(np.mean(labels == np.asarray(query_labels)[selection.query])),
         "kinds": {k: round(c / len(metas), 4) for k, c in zip(kinds, counts)}}
  if kind is not None:
    out[f"share_{kind}"] = out["kinds"].get(kind, 0.0)
  return out
