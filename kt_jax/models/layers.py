"""Layers shared by the models.

`DepthwiseConv` exists for speed: XLA:CPU runs grouped convolutions (feature_group_count =
channels) 5-10x slower than the same arithmetic written as k*k shifted multiply-adds, which
it fuses into one loop. On GPU/TPU the native grouped convolution is used. Parameters are
those of `nn.Conv(..., feature_group_count=C)`: a (k, k, 1, C) kernel, so checkpoints and
param paths do not depend on the backend.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF/lax "SAME": output ceil(size / stride), the odd pixel padded at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def output_stride_blocks(strides, output_stride: int,
                         stem_stride: int = 2) -> list[tuple[int, int]]:
  """(stride, depthwise dilation) of each block (of the given strides, after a stem of
  `stem_stride`) for a network of `output_stride`. transformers' MobileNetV2Model rule
  (DeepLab's output_stride): once the stem and blocks reach `output_stride`, each later block
  runs at stride 1 with the current dilation and multiplies the dilation of the blocks after
  it by its own stride. At 32 every block keeps its stride and dilation 1. Weights are
  unchanged."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
  current, dilation, out = stem_stride, 1, []
  for stride in strides:
    if current == output_stride:
      out.append((1, dilation))
      dilation *= stride
    else:
      out.append((stride, 1))
      current *= stride
  return out


class DepthwiseConv(nn.Module):
  kernel_size: int
  strides: int = 1
  padding: Any = "SAME"  # "SAME" or ((top, bottom), (left, right))
  use_bias: bool = False
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  # Atrous (dilated) taps, `dilation` pixels apart: what replaces a stride when a CNN keeps a
  # finer output stride (DeepLab's output_stride); "SAME" pads for the dilated extent.
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    k, s, d, c = self.kernel_size, self.strides, self.dilation, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c)).astype(self.dtype)
    x = x.astype(self.dtype)
    extent = (k - 1) * d + 1
    if self.padding == "SAME":
      pads = (same_padding(x.shape[1], extent, s), same_padding(x.shape[2], extent, s))
    else:
      pads = tuple(tuple(p) for p in self.padding)
    if jax.default_backend() == "cpu":
      y = _shifted_depthwise(x, kernel, s, pads, d)
    else:
      y = lax.conv_general_dilated(x, kernel, (s, s), pads, rhs_dilation=(d, d),
                                   feature_group_count=c,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (c,)).astype(self.dtype)
    return y


def _strided_taps(x, k: int, stride: int, pads, pad_value=0.0, dilation: int = 1):
  """Yields (i, j, the (B, out_h, out_w, C) input under kernel tap (i, j)) of a k x k window
  whose taps are `dilation` pixels apart."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
  extent = (k - 1) * dilation + 1
  out_h = (h + sum(pads[0]) - extent) // stride + 1
  out_w = (w + sum(pads[1]) - extent) // stride + 1
  for i in range(k):
    for j in range(k):
      top, left = i * dilation, j * dilation
      yield i, j, lax.slice(x, (0, top, left, 0),
                            (b, top + (out_h - 1) * stride + 1,
                             left + (out_w - 1) * stride + 1, c),
                            (1, stride, stride, 1))


def _shifted_depthwise(x, kernel, stride, pads, dilation: int = 1):
  acc = None
  for i, j, window in _strided_taps(x, kernel.shape[0], stride, pads, dilation=dilation):
    term = window * kernel[i, j, 0]
    acc = term if acc is None else acc + term
  return acc


def stride_key(stride: int) -> str:
  """The output name of a CNN's feature map at `stride` (input pixels per feature)."""
  return f"stride_{stride}"


def feature_map_outputs(feature_map, pyramid: dict | None = None) -> dict:
  """A CNN's final feature map under DINOv2's names, so CNNs plug into the same losses and
  evaluators as ViTs: the global-average-pooled feature plays the class token and the map,
  flattened row-major, the patch tokens (no extra norm is applied). `pyramid`: the earlier,
  finer maps by `stride_key` (the last block's output at each stride), what a decoder with a
  skip connection reads (models/classifier.Segmenter)."""
  b, h, w, c = feature_map.shape
  return {**(pyramid or {}),
          "x_norm_clstoken": feature_map.mean(axis=(1, 2)),
          "x_norm_patchtokens": feature_map.reshape(b, h * w, c),
          "feature_map": feature_map}


def tokens_2d(fn):
  """Runs `fn` on (tokens, width) and restores the leading dims.

  Why: differentiating a Dense over (B, T, D) gives a weight-gradient dot that contracts two
  dims, for which XLA:CPU materialises a transposed copy of the output gradient and leaves
  the library (YNNPACK) kernels; over (B*T, D) it is one plain dot. Measured on the 2-core
  CPU for a 384->1536 Dense at 32x65 tokens: forward+backward 92-100 ms on 3-D input against
  53-61 ms on 2-D input. The reshape itself is free (a bitcast).
  """
  @functools.wraps(fn)
  def wrapped(self, x):
    lead = x.shape[:-1]
    y = fn(self, x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])
  return wrapped


def max_pool(x, window: int, stride: int, pad: int):
  """`nn.max_pool` with symmetric padding; on the CPU as a max over shifted strided slices.

  Why: XLA:CPU differentiates `reduce_window` max with select-and-scatter, which took 245 ms
  for ResNet's stem pool (16x112x112x64) against 12 ms forward; the slice form's backward is
  a few fused selects. Gradients match torch except on exact ties inside a window, which
  `jnp.maximum` splits evenly and torch gives to one element (after a ReLU such ties are
  zeros, whose gradient the ReLU stops anyway).
  """
  if jax.default_backend() != "cpu":
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)))
  out = None
  for _, _, tap in _strided_taps(x, window, stride, ((pad, pad), (pad, pad)), -jnp.inf):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _conv(x, kernel, stride, padding):
  return lax.conv_general_dilated(x, kernel, (stride,) * 2, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x, kernel, stride, padding):
  return _conv(x, kernel, stride, padding)


def _conv_im2col_grad_fwd(x, kernel, stride, padding):
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_im2col_grad_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  k, _, c, o = kernel.shape
  patches = lax.conv_general_dilated_patches(
      x, (k, k), (stride,) * 2, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # The patch features are ordered (channel, row, column), channel slowest.
  dw = patches.reshape(-1, c * k * k).T @ dy.reshape(-1, o)
  dw = dw.reshape(c, k, k, o).transpose(1, 2, 0, 3)
  _, conv_vjp = jax.vjp(lambda x: _conv(x, kernel, stride, padding), x)
  return conv_vjp(dy)[0], dw


_conv_im2col_grad.defvjp(_conv_im2col_grad_fwd, _conv_im2col_grad_bwd)


class StemConv(nn.Module):
  """A bias-free `nn.Conv` (same (kh, kw, in, out) kernel) for convs with few input channels
  such as a stem, whose weight gradient on the CPU is one matmul over extracted patches.

  Why: XLA:CPU's weight gradient of ResNet's 7x7/2 stem on 3 channels ran at ~8 GFLOP/s
  (forward + weight gradient 520 ms at 16x224x224, 270 ms this way). The forward pass stays
  XLA's convolution, which is faster than building the patches.
  """
  features: int
  kernel_size: int
  stride: int
  pad: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features)).astype(self.dtype)
    padding = ((self.pad, self.pad), (self.pad, self.pad))
    x = x.astype(self.dtype)
    if jax.default_backend() != "cpu":
      return _conv(x, kernel, self.stride, padding)
    return _conv_im2col_grad(x, kernel, self.stride, padding)


# PyTorch's default initialisation of nn.Linear and nn.Conv2d (kaiming_uniform with a=sqrt(5)):
# weights and biases uniform in +-1/sqrt(fan_in), i.e. a third of the weight variance of flax's
# lecun_normal. Used where the reference code leaves a layer at PyTorch's default.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
  """Uniform in +-1/sqrt(fan_in), PyTorch's default bias of nn.Linear / nn.Conv2d."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)
