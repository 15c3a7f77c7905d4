"""kNN, linear probe and contact sheet against plain references written here."""
import math

import numpy as np
import pytest
from PIL import Image

from kt_jax.eval import contact_sheet, knn, linear_probe


def _reference_neighbours(query, bank, k):
  """Cosine top-k by Python loops in float64; ties to the lower bank index."""
  out_idx, out_sim = [], []
  for q in query:
    qn = q / max(math.sqrt(float(np.dot(q, q))), 1e-12)
    sims = [float(np.dot(qn, b / max(math.sqrt(float(np.dot(b, b))), 1e-12))) for b in bank]
    order = sorted(range(len(bank)), key=lambda i: (-sims[i], i))[:k]
    out_idx.append(order)
    out_sim.append([sims[i] for i in order])
  return np.array(out_idx), np.array(out_sim)


def _reference_knn(train, train_labels, test, num_classes, k, temperature):
  predictions = []
  for order, sims in zip(*_reference_neighbours(test, train, k)):
    votes = [0.0] * num_classes
    for i, s in zip(order, sims):
      votes[train_labels[i]] += math.exp(s / temperature)
    predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
  return np.array(predictions)


@pytest.fixture(scope="module")
def features():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(120, 16)).astype(np.float32)
  test = rng.normal(size=(37, 16)).astype(np.float32)
  return train, rng.integers(0, 5, 120), test


@pytest.mark.parametrize("k", [1, 5, 20, 120])
def test_knn_matches_loop_reference(features, k):
  train, labels, test = features
  expected = _reference_knn(train, labels, test, 5, k, 0.07)
  # chunk_size 8 does not divide 37: the padded last chunk is exercised too.
  got = knn.knn_classify(train, labels, test, num_classes=5, k=k, chunk_size=8)
  np.testing.assert_array_equal(np.asarray(got), expected)
  assert knn.knn_accuracy(train, labels, test, expected, 5, k=k) == 1.0


@pytest.mark.parametrize("temperature", [0.02, 0.5])
def test_knn_temperature_matches_reference(features, temperature):
  train, labels, test = features
  expected = _reference_knn(train, labels, test, 5, 20, temperature)
  got = knn.knn_classify(train, labels, test, 5, k=20, temperature=temperature)
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_nearest_neighbours_match_reference(features):
  train, _, test = features
  expected_idx, expected_sim = _reference_neighbours(test, train, 7)
  idx, sims = knn.nearest_neighbours(test, train, k=7, chunk_size=16)
  np.testing.assert_array_equal(np.asarray(idx), expected_idx)
  np.testing.assert_allclose(np.asarray(sims), expected_sim, atol=1e-5)


def test_k_larger_than_bank_is_clipped(features):
  train, labels, test = features
  small, small_labels = train[:6], labels[:6]
  idx, _ = knn.nearest_neighbours(test, small, k=50)
  assert idx.shape == (len(test), 6)
  np.testing.assert_array_equal(np.sort(np.asarray(idx), axis=1), np.tile(np.arange(6), (37, 1)))
  np.testing.assert_array_equal(np.asarray(knn.knn_classify(small, small_labels, test, 5, k=50)),
                                _reference_knn(small, small_labels, test, 5, 6, 0.07))


def test_ties_go_to_lower_index_and_class():
  v, w = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
  bank = np.stack([w, v, v]).astype(np.float32)  # Rows 1 and 2 are equally near to v.
  idx, _ = knn.nearest_neighbours(v[None], bank, k=2)
  np.testing.assert_array_equal(np.asarray(idx), [[1, 2]])
  # Rows 1 and 2 vote equally for classes 3 and 1: the lower class wins.
  assert int(knn.knn_classify(bank, np.array([0, 3, 1]), v[None], 4, k=2)[0]) == 1


def test_scale_and_zero_rows(features):
  train, labels, test = features
  base = np.asarray(knn.knn_classify(train, labels, test, 5, k=10))
  scaled = np.asarray(knn.knn_classify(train * 7.0, labels, test * 0.01, 5, k=10))
  np.testing.assert_array_equal(base, scaled)
  _, sims = knn.nearest_neighbours(np.zeros((1, 16), np.float32), train, k=3)
  np.testing.assert_array_equal(np.asarray(sims), np.zeros((1, 3)))


def _blobs(rng, n_per_class, means, std=1.0):
  labels = np.repeat(np.arange(len(means)), n_per_class)
  return means[labels] + std * rng.normal(size=(len(labels), means.shape[1])), labels


def test_linear_probe_reaches_bayes_accuracy_on_blobs():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 10)) * 0.9
  train_x, train_y = _blobs(rng, 150, means)
  test_x, test_y = _blobs(rng, 250, means)
  # Equal priors and isotropic unit noise: the nearest true mean is the Bayes classifier.
  bayes = np.mean(np.argmin(((test_x[:, None] - means) ** 2).sum(-1), axis=1) == test_y)
  result = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=0)
  assert result["C"] in linear_probe.C_GRID and result["val_accuracy"] is not None
  assert 0.6 < bayes < 0.97, bayes  # Overlapping blobs: the task is not trivial.
  assert result["accuracy"] >= bayes - 0.05, (result, bayes)


def test_linear_probe_is_at_chance_on_random_labels():
  rng = np.random.default_rng(1)
  train_x, test_x = rng.normal(size=(300, 20)), rng.normal(size=(1000, 20))
  train_y, test_y = rng.integers(0, 5, 300), rng.integers(0, 5, 1000)
  result = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=0)
  assert abs(result["accuracy"] - 0.2) < 0.06, result


def test_linear_probe_c_ignores_the_test_set():
  rng = np.random.default_rng(2)
  means = rng.normal(size=(3, 8))
  train_x, train_y = _blobs(rng, 40, means)
  test_x, test_y = _blobs(rng, 40, means)
  a = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=0)
  b = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, rng.permutation(test_y), seed=0)
  assert a["C"] == b["C"] and a["accuracy"] != b["accuracy"]


def test_linear_probe_one_shot_falls_back_to_default_c():
  rng = np.random.default_rng(3)
  means = rng.normal(size=(3, 8)) * 5
  train_x, train_y = _blobs(rng, 1, means)
  test_x, test_y = _blobs(rng, 20, means)
  result = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y)
  assert result["C"] == 1.0 and result["val_accuracy"] is None
  assert result["accuracy"] > 0.8


def _colour_fraction(cell, colour):
  target = np.array(Image.new("RGB", (1, 1), colour)).reshape(3).astype(int)
  return np.mean(np.abs(cell.astype(int) - target).max(-1) < 40)


def test_contact_sheet_size_and_borders(tmp_path):
  rng = np.random.default_rng(0)
  grey = np.full((5, 20, 24, 3), 128, np.uint8)
  bank = np.full((8, 16, 16), 128, np.uint8)  # Grey bank images are drawn too.
  indices = rng.integers(0, 8, (5, 4))
  query_labels, bank_labels = rng.integers(0, 2, 5), rng.integers(0, 2, 8)
  path = contact_sheet.save_neighbour_sheet(grey, bank, indices, str(tmp_path / "sheet.png"),
                                            query_labels, bank_labels, cell_pixels=50)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (5 * 50, 5 * 50)
    pixels = np.asarray(image.convert("RGB"))
  for row in range(5):
    for column in range(1, 5):
      cell = pixels[row * 50:(row + 1) * 50, column * 50:(column + 1) * 50]
      right = query_labels[row] == bank_labels[indices[row, column - 1]]
      good, bad = _colour_fraction(cell, contact_sheet.CORRECT), _colour_fraction(
          cell, contact_sheet.WRONG)
      assert (good > 0.05 and bad < 0.01) if right else (bad > 0.05 and good < 0.01), (
          row, column, good, bad)
      np.testing.assert_array_equal(cell[8:30, 8:42], 128)  # The image shows, above the label.


def test_contact_sheet_without_labels_scales_with_grid(tmp_path):
  images = np.zeros((3, 8, 8, 3), np.uint8)
  path = contact_sheet.save_neighbour_sheet(images, images, np.zeros((2, 6), int),
                                            str(tmp_path / "plain.png"), cell_pixels=30)
  with Image.open(path) as image:
    assert image.size == (7 * 30, 2 * 30)
    pixels = np.asarray(image.convert("RGB"))
  assert _colour_fraction(pixels, contact_sheet.CORRECT) == 0
  assert _colour_fraction(pixels, contact_sheet.WRONG) == 0


def test_frozen_eval_stage_reads_the_shared_schema(tmp_path, capsys):
  """The demo's stage on the keys every stage uses: teacher.path and the eval section."""
  import json
  from kt_jax import config_defaults, stages
  c = config_defaults.frozen_eval_config()
  c.teacher.path = "random:vit_tiny_patch16"
  c.image_size = 32
  c.eval.tasks = ("mnist",)
  c.eval.task_options.mnist.labels_per_class = 3
  c.eval.task_options.mnist.test_per_class = 2
  c.eval.batch_size, c.eval.knn_k = 16, 5
  c.contact_sheet.rows, c.contact_sheet.k = 2, 2
  summary = stages.run(c, str(tmp_path))
  (row,) = summary["results"]
  assert (row["task"], row["classes"], row["train"], row["test"]) == ("mnist", 10, 30, 20)
  assert 0 <= row["knn_top1"] <= 1 and 0 <= row["linear_probe_top1"] <= 1
  assert json.loads((tmp_path / "results.json").read_text()) == summary["results"]
  assert (tmp_path / "neighbours_mnist.png").exists()
  assert "Frozen random:vit_tiny_patch16 features (x_norm_clstoken) at 32 px" in (
      capsys.readouterr().out)
