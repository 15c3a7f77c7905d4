"""How much of a target's variation a regression explains: R^2, the coefficient of determination.

A distillation loss near the teacher's own variance means the student predicts the mean
target and nothing more; R^2 says so directly (0: the mean, 1: perfect, < 0: worse than
the mean), independent of the targets' scale. On held-out images it also says whether the
student generalises beyond the images it was trained on.
"""
import jax.numpy as jnp


def r_squared(prediction, target) -> jnp.ndarray:
  """1 - sum((y - y_hat)^2) / sum((y - mean(y))^2) over samples and dimensions.

  prediction, target: (..., D); every leading axis counts as samples (e.g. B x N patch tokens).
  The mean is per dimension over the samples, so this is sklearn's
  `r2_score(..., multioutput="variance_weighted")`: dimensions weigh by their variance, as
  they do in the MSE loss.
  """
  y = jnp.reshape(target, (-1, target.shape[-1])).astype(jnp.float32)
  y_hat = jnp.reshape(prediction, (-1, prediction.shape[-1])).astype(jnp.float32)
  residual = jnp.sum(jnp.square(y - y_hat))
  total = jnp.sum(jnp.square(y - jnp.mean(y, axis=0)))
  return 1.0 - residual / jnp.maximum(total, 1e-12)


def ridge_fit(features, targets, alpha: float):
  """(kernel (D, K), bias (K,)) minimising ||Y - X W - b||^2 + alpha * n * ||W||^2.

  The closed-form ridge regression of (n, D) features onto (n, K) targets, in float64 on the
  host; `alpha` is relative to the number of samples (sklearn's `Ridge(alpha=alpha * n)`),
  so one value suits any n.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
  y = np.asarray(targets, np.float64).reshape(-1, np.shape(targets)[-1])
  x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
  xc = x - x_mean
  gram = xc.T @ xc + alpha * len(x) * np.eye(x.shape[1])
  kernel = np.linalg.solve(gram, xc.T @ (y - y_mean))
  return kernel.astype(np.float32), (y_mean - x_mean @ kernel).astype(np.float32)
