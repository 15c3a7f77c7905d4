"""Normalising a teacher's targets before the student regresses them (off by default).

DINOv2's tokens come out of a LayerNorm, so the official Proteus code regresses them as they
are. A CNN's pooled ReLU6 feature and feature map are another matter: per-dimension scales
differ by orders of magnitude, most entries are zero, and the class-token target varies far
less than the patch targets, so in a sum of MSE terms the patch terms drive the shared
backbone and the class token is left predicting its mean. Statistics are fitted once, on
teacher features of fixed unaugmented proxy images, so a resumed run recomputes them exactly.

  "none":     targets as the teacher gives them (the official code; the default).
  "variance": (t - mean) / sqrt(mean per-dim variance), one scalar per target kind: each MSE
              term becomes 1 - R^2 of that kind, so the terms weigh the same.
  "dim":      (t - mean) / std per dimension (a standard scaler).
  "whiten":   PCA whitening, (t - mean) @ U diag(1 / sqrt(eigenvalue + eps)).
Predictions map back to the teacher's space with `denormalise` (R^2 is reported there).
"""
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "variance", "dim", "whiten")


def fit(kind: str, features: np.ndarray, eps: float = 1e-3) -> dict:
  """Statistics of (samples, D) teacher features: {'mean': (D,), 'matrix': (D, D) or (D,)}.

  `matrix` maps centred targets to normalised ones; `inverse` maps back. A dimension whose
  variance is below `eps` times the mean variance is not blown up (floored at that).
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown target normalisation {kind!r}; one of {', '.join(KINDS)}.")
  x = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
  mean = x.mean(axis=0)
  var = x.var(axis=0)
  floor = eps * max(var.mean(), 1e-12)
  if kind == "none":
    scale = np.ones_like(mean)
    return {"mean": np.zeros_like(mean, np.float32), "matrix": scale.astype(np.float32),
            "inverse": scale.astype(np.float32)}
  if kind == "variance":
    scale = np.full_like(mean, 1.0 / np.sqrt(var.mean()))
  elif kind == "dim":
    scale = 1.0 / np.sqrt(np.maximum(var, floor))
  else:
    cov = np.cov(x - mean, rowvar=False, bias=True)
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues = np.maximum(eigenvalues, floor)
    return {"mean": mean.astype(np.float32),
            "matrix": (vectors / np.sqrt(eigenvalues)).astype(np.float32),
            "inverse": (vectors * np.sqrt(eigenvalues)).T.astype(np.float32)}
  return {"mean": mean.astype(np.float32), "matrix": scale.astype(np.float32),
          "inverse": (1.0 / scale).astype(np.float32)}


def normalise(stats: dict, targets):
  """(..., D) teacher targets -> normalised targets, in float32."""
  centred = jnp.asarray(targets, jnp.float32) - stats["mean"]
  if stats["matrix"].ndim == 1:
    return centred * stats["matrix"]
  return centred @ stats["matrix"]


def denormalise(stats: dict, predictions):
  """Normalised predictions -> the teacher's space (the inverse of `normalise`)."""
  p = jnp.asarray(predictions, jnp.float32)
  p = p * stats["inverse"] if stats["inverse"].ndim == 1 else p @ stats["inverse"]
  return p + stats["mean"]
