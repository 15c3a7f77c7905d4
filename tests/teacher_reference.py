"""Shared by the teacher parity tests: tiny transformers models with random non-trivial weights,
saved as a user would save them, and the relative-error measure the tests assert on."""
import numpy as np
import torch

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            patch_size=8)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Every parameter moved off its init: norms' weights away from 1,
  biases, tokens and LayerScale away from their constants, so no term of the forward can
  hide behind a trivial value."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim <= 1:  # norms, biases, class embedding, LayerScale, logit scale
        p.add_(0.2 * noise)
      else:
        p.copy_(0.5 * p + noise * (0.5 / max(p.shape[-1], 1) ** 0.5))
  return model.eval()


def rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|: the error on the reference's own scale."""
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def images(seed: int, height: int, width: int, batch: int = 2) -> np.ndarray:
  """Normalised NHWC float32 images."""
  return np.random.default_rng(seed).standard_normal((batch, height, width, 3)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
