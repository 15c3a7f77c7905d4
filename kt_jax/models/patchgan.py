"""PatchGAN discriminator: taming-transformers' NLayerDiscriminator (pix2pix's), in Flax.

A stack of 4x4 convolutions, stride 2 then 1, LeakyReLU 0.2, BatchNorm after every conv but the
first and the last, widths ndf x (1, 2, 4, 8, 8, ...); the output is one logit per overlapping
image patch (B, h, w, 1), not one per image. Initialisation follows taming's `weights_init`:
convolution kernels N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0. With `norm="actnorm"`
the norm is taming's ActNorm (a per-channel affine map initialised from the statistics of the
batch it is initialised on); `norm="none"` drops it.

NHWC images in, whatever range the generator produces ([-1, 1] for the VQGAN).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("batch", "actnorm", "none")


def _normal(mean: float, std: float):
  def init(key, shape, dtype=jnp.float32):
    return mean + std * nn.initializers.normal(1.0)(key, shape, dtype)
  return init


class ActNorm(nn.Module):
  """y = scale * (x + loc), per channel; at init loc = -mean and scale = 1 / (std + 1e-6) of
  the init batch (taming's data-dependent initialisation, done when Flax initialises)."""

  @nn.compact
  def __call__(self, x):
    axes = tuple(range(x.ndim - 1))
    loc = self.param("loc", lambda _: -jnp.mean(x, axes))
    scale = self.param("scale", lambda _: 1.0 / (jnp.std(x, axes) + 1e-6))
    return scale * (x + loc)


class PatchGAN(nn.Module):
  ndf: int = 64
  n_layers: int = 3
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.norm not in NORMS:
      raise ValueError(f"Unknown norm {self.norm!r}; expected one of {NORMS}.")
    x = x.astype(self.dtype)
    # taming: (out channels, stride) per conv; the last two keep the resolution.
    widths = [self.ndf * min(2 ** n, 8) for n in range(self.n_layers + 1)]
    strides = [2] * self.n_layers + [1]
    for i, (width, stride) in enumerate(zip(widths, strides)):
      normed = i > 0 and self.norm != "none"
      x = nn.Conv(width, (4, 4), (stride, stride), padding=((1, 1), (1, 1)),
                  use_bias=not (normed and self.norm == "batch"),  # taming: BN has the bias
                  kernel_init=_normal(0.0, 0.02), dtype=self.dtype, name=f"conv_{i}")(x)
      if normed and self.norm == "batch":
        # torch BatchNorm2d: eps 1e-5, momentum 0.1 (Flax counts momentum the other way).
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         scale_init=_normal(1.0, 0.02), dtype=self.dtype, name=f"norm_{i}")(x)
      elif normed:
        x = ActNorm(name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), (1, 1), padding=((1, 1), (1, 1)), kernel_init=_normal(0.0, 0.02),
                dtype=self.dtype, name=f"conv_{self.n_layers + 1}")(x)
    return x.astype(jnp.float32)
