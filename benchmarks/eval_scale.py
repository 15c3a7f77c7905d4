"""Time and peak memory of kNN and the linear probe on synthetic ImageNet-sized features.

  python benchmarks/eval_scale.py --what knn --train 1281167 --test 50000
  python benchmarks/eval_scale.py --what optax --train 100000 --test 10000
  python benchmarks/eval_scale.py --what sklearn --train 10000 --test 10000

Features are Gaussian clusters (one centre per class, unit noise) in float32, generated in
blocks; each invocation measures one method in a fresh process, so the peak resident memory
(ru_maxrss, which includes the features themselves) belongs to that method alone. Prints one
JSON line.
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic(n: int, dim: int, classes: int, seed: int, spread: float):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(1234).normal(size=(classes, dim)).astype(np.float32) * spread
  labels = rng.integers(0, classes, n).astype(np.int32)
  feats = np.empty((n, dim), np.float32)
  for start in range(0, n, 65536):
    y = labels[start:start + 65536]
    feats[start:start + 65536] = centres[y] + rng.standard_normal((len(y), dim), np.float32)
  return feats, labels


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--what", choices=("knn", "optax", "sklearn"), required=True)
  parser.add_argument("--train", type=int, default=1_281_167)
  parser.add_argument("--test", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--spread", type=float, default=0.5, help="centre scale vs unit noise")
  parser.add_argument("--k", type=int, default=20)
  parser.add_argument("--epochs", type=float, default=10.0)
  args = parser.parse_args()

  train_x, train_y = synthetic(args.train, args.dim, args.classes, 0, args.spread)
  test_x, test_y = synthetic(args.test, args.dim, args.classes, 1, args.spread)
  data_gib = peak_rss_gib()
  import jax  # pylint: disable=g-import-not-at-top
  from kt_jax.eval import knn, linear_probe, optax_probe  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  if args.what == "knn":
    result = {"top1": knn.knn_accuracy(train_x, train_y, test_x, test_y, args.classes, k=args.k)}
  elif args.what == "optax":
    result = optax_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y, args.classes,
                                               epochs=args.epochs)
  else:
    result = linear_probe.linear_probe_accuracy(train_x, train_y, test_x, test_y)
  seconds = time.perf_counter() - start
  print(json.dumps({
      "what": args.what, "train": args.train, "test": args.test, "dim": args.dim,
      "classes": args.classes, "seconds": round(seconds, 1),
      "peak_rss_gib": round(peak_rss_gib(), 2), "rss_after_data_gib": round(data_gib, 2),
      "devices": jax.device_count(), "backend": jax.default_backend(),
      "cpu": platform.processor() or platform.machine(), **result}))


if __name__ == "__main__":
  main()
