"""Linear probe: logistic regression on frozen CLS features, as SynCLR and Proteus report it.

Features are standardised with statistics of the training rows only, then fit with sklearn's
L2-regularised multinomial `LogisticRegression` (L-BFGS). The inverse regularisation C comes
from a small log grid, scored on a stratified validation split carved from the training set
(`val_fraction`, at least one row per class); the chosen C is then refit on all training rows.
The test set therefore never influences C. With fewer than two training rows in some class no
validation split exists, and `default_c` is used.

Above `SKLEARN_MAX_ROWS` training rows, `probe()` switches to `optax_probe` (on-device
logistic regression over an lr x weight-decay grid, DINOv2-style), which scales to
ImageNet-1k; sklearn's L-BFGS on all rows at once does not (its time grows with rows x
classes x iterations on one host, for each C of the grid).
"""
import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# sklearn up to here (the shipped tasks have a few hundred rows; its results there are the
# reference the README quotes), the optax probe above. Measured in benchmarks/RESULTS.md.
SKLEARN_MAX_ROWS = 10_000


def _fit(feats: np.ndarray, labels: np.ndarray, c: float, seed: int, max_iter: int):
  probe = make_pipeline(StandardScaler(),
                        LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
  with warnings.catch_warnings():
    # Weak regularisation on separable features may stop at max_iter; the fit is still usable.
    warnings.simplefilter("ignore", ConvergenceWarning)
    return probe.fit(feats, labels)


def _validation_split(labels: np.ndarray, val_fraction: float, seed: int):
  """Stratified (train_idx, val_idx), or None when some class has fewer than two rows."""
  classes, counts = np.unique(labels, return_counts=True)
  n_val = max(int(round(val_fraction * len(labels))), len(classes))
  if counts.min() < 2 or len(labels) - n_val < len(classes):
    return None
  return train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels,
                          random_state=seed)


def select_c(feats: np.ndarray, labels: np.ndarray, seed: int = 0,
             c_grid: Sequence[float] = C_GRID, val_fraction: float = 0.2,
             default_c: float = 1.0, max_iter: int = 1000) -> tuple[float, float | None]:
  """(best C, its validation accuracy); (default_c, None) when no split is possible."""
  split = _validation_split(labels, val_fraction, seed)
  if split is None:
    return default_c, None
  fit_idx, val_idx = split
  scores = [_fit(feats[fit_idx], labels[fit_idx], c, seed, max_iter)
            .score(feats[val_idx], labels[val_idx]) for c in c_grid]
  best = int(np.argmax(scores))  # Ties go to the smaller C, the stronger regulariser.
  return float(c_grid[best]), float(scores[best])


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, seed: int = 0,
                          c_grid: Sequence[float] = C_GRID, val_fraction: float = 0.2,
                          max_iter: int = 1000) -> dict:
  """dict(accuracy=test top-1, C=chosen C, val_accuracy=its validation score or None)."""
  train_feats = np.asarray(train_feats, np.float64)
  train_labels = np.asarray(train_labels)
  c, val_accuracy = select_c(train_feats, train_labels, seed, c_grid, val_fraction,
                             max_iter=max_iter)
  probe = _fit(train_feats, train_labels, c, seed, max_iter)
  accuracy = probe.score(np.asarray(test_feats, np.float64), np.asarray(test_labels))
  return dict(accuracy=float(accuracy), C=c, val_accuracy=val_accuracy)


def probe(train_feats, train_labels, test_feats, test_labels, num_classes=None, seed: int = 0,
          method: str = "auto", mesh=None) -> dict:
  """The linear probe for a set of any size: sklearn (`method="sklearn"`), the on-device
  optax probe (`"optax"`), or by training-set size (`"auto"`, see SKLEARN_MAX_ROWS).
  dict(accuracy, method, val_accuracy, and C or lr/weight_decay)."""
  if method not in ("auto", "sklearn", "optax"):
    raise ValueError(f"Unknown linear probe method {method!r}: auto, sklearn or optax.")
  if method == "auto":
    method = "sklearn" if len(train_labels) <= SKLEARN_MAX_ROWS else "optax"
  if method == "sklearn":
    result = linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, seed=seed)
  else:
    from kt_jax.eval import optax_probe  # pylint: disable=g-import-not-at-top
    result = optax_probe.linear_probe_accuracy(train_feats, train_labels, test_feats,
                                               test_labels, num_classes, seed=seed, mesh=mesh)
  return dict(result, method=method)
