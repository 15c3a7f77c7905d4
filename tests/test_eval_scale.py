"""kNN and linear probe built to scale: chunked, device-sharded kNN against a NumPy reference
(1 and 8 simulated devices), the optax probe against sklearn's LogisticRegression."""
import os
import subprocess
import sys

import numpy as np
import pytest

from kt_jax.eval import knn, linear_probe, optax_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_knn(train, train_labels, test, num_classes, k, temperature):
  """DINO's weighted kNN, written out in float64 NumPy: (predictions, neighbour indices)."""
  normalise = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sims = normalise(test.astype(np.float64)) @ normalise(train.astype(np.float64)).T
  k = min(k, len(train))
  indices = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(sims, indices, axis=1)
  votes = np.zeros((len(test), num_classes))
  for q in range(len(test)):
    np.add.at(votes[q], train_labels[indices[q]], np.exp(top[q] / temperature))
  return votes.argmax(axis=1), indices


def clusters(n, dim, classes, seed, spread=1.0):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(99).normal(size=(classes, dim)) * spread
  labels = rng.integers(0, classes, n)
  return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("bank_chunk,chunk_size,n_train", [(16, 8, 100), (64, 256, 301),
                                                           (65536, 5, 7)])
def test_chunked_knn_matches_numpy(bank_chunk, chunk_size, n_train):
  train, train_labels = clusters(n_train, 24, 6, 0, spread=0.4)
  test, _ = clusters(37, 24, 6, 1, spread=0.4)
  expected, expected_idx = numpy_knn(train, train_labels, test, 6, 20, 0.07)
  idx, sims = knn.nearest_neighbours(test, train, k=20, chunk_size=chunk_size,
                                     bank_chunk=bank_chunk)
  np.testing.assert_array_equal(idx, expected_idx)
  assert sims.shape == (37, min(20, n_train)) and np.all(np.diff(sims, axis=1) <= 0)
  got = knn.knn_classify(train, train_labels, test, 6, k=20, chunk_size=chunk_size,
                         bank_chunk=bank_chunk)
  np.testing.assert_array_equal(got, expected)


def test_equal_similarities_go_to_the_lower_row_across_chunks():
  bank = np.tile(np.eye(4, dtype=np.float32)[:1], (10, 1))  # ten identical rows
  idx, _ = knn.nearest_neighbours(bank[:1], bank, k=4, bank_chunk=3)
  np.testing.assert_array_equal(idx[0], [0, 1, 2, 3])


_EIGHT_DEVICES = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, %r)
import jax, numpy as np
from test_eval_scale import clusters, numpy_knn
from kt_jax import sharding
from kt_jax.eval import knn, optax_probe
assert jax.device_count() == 8
mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
train, labels = clusters(203, 24, 6, 0, spread=0.4)  # not a multiple of 8: padded rows
test, test_labels = clusters(41, 24, 6, 1, spread=0.4)
expected, expected_idx = numpy_knn(train, labels, test, 6, 20, 0.07)
idx, _ = knn.nearest_neighbours(test, train, k=20, bank_chunk=8, chunk_size=16, mesh=mesh)
np.testing.assert_array_equal(idx, expected_idx)
np.testing.assert_array_equal(knn.knn_classify(train, labels, test, 6, bank_chunk=8, mesh=mesh),
                              expected)
from kt_jax.eval import linear_probe
train, labels = clusters(600, 24, 6, 0, spread=0.5)
test, test_labels = clusters(600, 24, 6, 1, spread=0.5)
r = optax_probe.linear_probe_accuracy(train, labels, test, test_labels, 6, mesh=mesh)
sk = linear_probe.linear_probe_accuracy(train, labels, test, test_labels)
assert abs(r["accuracy"] - sk["accuracy"]) < 0.04, (r, sk)
print("ok")
"""


@pytest.mark.slow  # ~70 s on the 2-core CPU
def test_knn_and_probe_on_eight_devices():
  script = _EIGHT_DEVICES % os.path.dirname(__file__)
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_optax_probe_matches_sklearn_on_synthetic_clusters():
  train, train_labels = clusters(1500, 32, 8, 0, spread=0.45)
  test, test_labels = clusters(1000, 32, 8, 1, spread=0.45)
  sk = linear_probe.linear_probe_accuracy(train, train_labels, test, test_labels)
  ours = optax_probe.linear_probe_accuracy(train, train_labels, test, test_labels, 8)
  assert 0.6 < sk["accuracy"] < 0.99  # not trivially separable: the comparison means something
  assert abs(ours["accuracy"] - sk["accuracy"]) < 0.03, (ours, sk)
  assert ours["lr"] in optax_probe.LR_GRID and ours["weight_decay"] in optax_probe.WD_GRID


def test_optax_probe_matches_sklearn_on_shipped_mnist_pixels():
  from kt_jax.data import tasks
  task = tasks.build("mnist", {"labels_per_class": 30, "test_per_class": 40})
  pixels = lambda x: x[..., 0].reshape(len(x), -1).astype(np.float32) / 255.0
  args = (pixels(task.train_images), task.train_labels, pixels(task.test_images),
          task.test_labels)
  sk = linear_probe.linear_probe_accuracy(*args)
  ours = optax_probe.linear_probe_accuracy(*args, num_classes=10)
  assert sk["accuracy"] > 0.6
  assert abs(ours["accuracy"] - sk["accuracy"]) < 0.05, (ours, sk)


def test_probe_picks_the_method_by_size(monkeypatch):
  train, train_labels = clusters(60, 8, 3, 0)
  test, test_labels = clusters(30, 8, 3, 1)
  assert linear_probe.probe(train, train_labels, test, test_labels)["method"] == "sklearn"
  monkeypatch.setattr(linear_probe, "SKLEARN_MAX_ROWS", 50)
  result = linear_probe.probe(train, train_labels, test, test_labels, 3)
  assert result["method"] == "optax" and result["accuracy"] > 0.8
  with pytest.raises(ValueError, match="auto, sklearn or optax"):
    linear_probe.probe(train, train_labels, test, test_labels, method="lbfgs")
