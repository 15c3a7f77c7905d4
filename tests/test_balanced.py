"""Query-balanced selection on small hand-made neighbour lists."""
import numpy as np

from kt_jax.retrieval import balanced


def test_round_robin_gives_a_contested_image_to_one_query_and_the_next_to_the_other():
  # Both queries rank crop 0 first; crops 0-5 are images 0-5.
  ids = np.array([[0, 1, 2, 3], [0, 4, 5, 3]])
  scores = np.array([[.9, .8, .7, .6], [.95, .5, .4, .3]])
  s = balanced.select(scores, ids, np.arange(6), quota=2)
  assert list(zip(s.query, s.crop)) == [(0, 0), (1, 4), (0, 1), (1, 5)]
  assert s.image_taken == 1  # query 1's crop 0 was already taken
  np.testing.assert_array_equal(s.rank, [0, 1, 1, 2])


def test_unbalanced_takes_the_globally_best_pairs():
  ids = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
  scores = np.array([[.9, .85, .8, .75], [.5, .4, .3, .2]])
  s = balanced.select(scores, ids, np.arange(8), quota=2, balanced=False)
  assert s.crop.tolist() == [0, 1, 2, 3]  # query 0 takes all four slots
  assert s.per_query(2).tolist() == [4, 0]
  s = balanced.select(scores, ids, np.arange(8), quota=2, balanced=True)
  assert s.per_query(2).tolist() == [2, 2]


def test_crops_of_one_image_count_once_unless_allowed():
  crop_image = np.array([0, 0, 1, 1, 2, 2])  # two crops per image
  ids, scores = np.array([[0, 1, 2, 3, 4, 5]]), np.linspace(1, .5, 6)[None]
  assert balanced.select(scores, ids, crop_image, 3).crop.tolist() == [0, 2, 4]
  assert balanced.select(scores, ids, crop_image, 3,
                         distinct_images=False).crop.tolist() == [0, 1, 2]


def test_near_duplicates_are_dropped_and_counted():
  vectors = np.eye(4, dtype=np.float32)
  vectors[1] = vectors[0] * .99 + vectors[1] * .141  # cosine ~0.99 with crop 0
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  ids, scores = np.array([[0, 1, 2, 3]]), np.array([[.9, .8, .7, .6]])
  s = balanced.select(scores, ids, np.arange(4), 3, vectors=vectors, duplicate_threshold=.95)
  assert s.crop.tolist() == [0, 2, 3] and s.duplicates == 1
  s = balanced.select(scores, ids, np.arange(4), 3, vectors=vectors, duplicate_threshold=None)
  assert s.crop.tolist() == [0, 1, 2] and s.duplicates == 0


def test_random_lists_quota_exact_and_images_distinct():
  rng = np.random.default_rng(0)
  num_queries, k, crops_per_image, images = 30, 60, 5, 400
  crop_image = np.repeat(np.arange(images), crops_per_image)
  ids = np.stack([rng.choice(images * crops_per_image, k, replace=False)
                  for _ in range(num_queries)])
  scores = -np.sort(-rng.random((num_queries, k)), axis=1)
  s = balanced.select(scores, ids, crop_image, quota=7)
  assert (s.per_query(num_queries) == 7).all()
  chosen_images = crop_image[s.crop]
  assert len(set(chosen_images)) == len(chosen_images) == 7 * num_queries
  for q, crop, rank in zip(s.query, s.crop, s.rank):
    assert ids[q, rank] == crop  # every row points back into its query's list
  # Each query's picks come in its own rank order.
  for q in range(num_queries):
    assert (np.diff(s.rank[s.query == q]) > 0).all()


def test_precision_against_gallery_metadata():
  meta = [{"kind": "mnist", "label": 3}, {"kind": "mnist", "label": 5}, {"kind": "photo"}]
  s = balanced.Selection(query=np.array([0, 0, 1]), crop=np.array([0, 1, 2]),
                         score=np.ones(3), rank=np.zeros(3, int), image_taken=0, duplicates=0)
  p = balanced.precision(s, np.array([3, 5]), np.arange(3), meta, kind="mnist")
  assert p["label_precision"] == 1 / 3
  assert p["share_mnist"] == round(2 / 3, 4) and p["kinds"]["photo"] == round(1 / 3, 4)
