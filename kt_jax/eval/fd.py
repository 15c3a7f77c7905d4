"""Frechet distance between two image sets in a model's feature space (FID's formula).

`python -m kt_jax.eval.fd --a DIR --b DIR --model NAME` prints
  ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))
of the Gaussians fitted to the pooled features (`x_norm_clstoken`) of the two folders, the
domain-gap measure of One-to-Transfer-All. The model is anything `kt_jax.convert.
load_pretrained` reads: a shipped teacher (default `efficientnet_lite0`), a checkpoint, a kt_jax
model directory or `random:<registered name>`.

The trace of the matrix square root: S_a S_b is not symmetric, so instead of
`scipy.linalg.sqrtm` (complex round-off, FID's eps-on-the-diagonal fix) we use
tr((S_a S_b)^(1/2)) = tr((A S_b A)^(1/2)) with A = S_a^(1/2), whose argument is symmetric
positive semi-definite: two `eigh` in float64, negative round-off eigenvalues clipped to 0.
It is exact for singular covariances (fewer images than feature dimensions) too.
"""
import argparse
import os
import sys

import numpy as np

from kt_jax import errors


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of (N, D) features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"need (N >= 2, D) features; got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
  """tr((sigma_a sigma_b)^(1/2)) for symmetric PSD matrices, via a symmetric eigenproblem."""
  root_a = _psd_sqrt(np.asarray(sigma_a, np.float64))
  inner = root_a @ np.asarray(sigma_b, np.float64) @ root_a
  values = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sum(np.sqrt(np.clip(values, 0, None))))


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
  """Frechet (2-Wasserstein squared) distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
  value = (np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b)
           - 2.0 * trace_sqrt_product(sigma_a, sigma_b))
  return float(max(value, 0.0))  # round-off can leave -1e-12 for identical sets


def feature_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  return frechet_distance(*statistics(features_a), *statistics(features_b))


def source_features(source, module, variables, spec, batch_size: int = 64,
                    desc: str = "features") -> np.ndarray:
  """Pooled features (N, D) of every decodable image of a grain source."""
  from kt_jax.eval import features
  out = features.extract_source_features(module, variables, source, spec,
                                         batch_size=batch_size, keys=("x_norm_clstoken",),
                                         desc=desc)
  return out["x_norm_clstoken"]


def folder_features(folder: str, module, variables, spec, batch_size: int = 64) -> np.ndarray:
  """Pooled features (N, D) of every image of `folder` (flat or class subfolders)."""
  from kt_jax.data import sources
  return source_features(sources.ImageFolderSource(folder), module, variables, spec,
                         batch_size, desc=os.path.basename(folder.rstrip("/")))


def check_folder(folder: str) -> None:
  """A folder FD can use: it exists and holds at least 2 images (one clear error if not)."""
  from kt_jax.data import sources
  if not os.path.isdir(folder):
    raise errors.UserError(f"{folder}: no such directory (it does not exist or is not a "
                           "folder)")
  count = len(sources.list_image_folder(folder)[0])
  if count < 2:
    raise errors.UserError(f"{folder}: {count} images; the Frechet distance needs at least 2 "
                           "(and many more than the feature dimension to be meaningful)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m kt_jax.eval.fd", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--a", required=True, help="folder of images (flat or class subfolders)")
  parser.add_argument("--b", required=True, help="the other folder")
  parser.add_argument("--model", default="efficientnet_lite0",
                      help="feature model: shipped name, checkpoint, kt_jax directory or "
                           "random:<registered name> (default: efficientnet_lite0)")
  parser.add_argument("--image_size", type=int, default=0,
                      help="input size (default: the model's own)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
  return parser


def _run(args) -> int:
  from kt_jax import convert
  check_folder(args.a)
  check_folder(args.b)
  convert.check_source(args.model)
  module, variables = convert.load_pretrained(args.model)
  spec = convert.input_spec(args.model, args.image_size)
  feats_a, feats_b = (folder_features(folder, module, variables, spec, args.batch_size)
                      for folder in (args.a, args.b))
  distance = feature_distance(feats_a, feats_b)
  dim = feats_a.shape[1]
  note = (f" (fewer images than the {dim} feature dimensions: covariances are singular)"
          if min(len(feats_a), len(feats_b)) <= dim else "")
  print(f"FD({args.a}, {args.b}) in {args.model} features ({len(feats_a)} vs {len(feats_b)} "
        f"images, dim {dim}){note}:")
  print(f"{distance:.6f}")
  return 0


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return errors.exit_on_user_error(_run, args, prog="kt_jax.eval.fd", debug=args.debug)


if __name__ == "__main__":
  sys.exit(main())
