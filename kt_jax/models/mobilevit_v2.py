"""MobileViT-V2 in Flax linen, layer for layer as transformers' `MobileViTV2Model`.

Module names mirror transformers' attribute names (`encoder.layer.2` -> `layer_2`, ...) so the
converter maps paths mechanically. Feature maps stay NHWC; a MobileViT-V2 block unfolds them
into (B, pixels-in-patch P, patches N, C), which is torch's (B, C, P, N) with channels last:
P runs row-major inside a patch and N row-major over the patch grid, as `nn.functional.unfold`
orders them. Separable linear attention takes its softmax over N, so only that order matters.

Like transformers, a grid not divisible by the patch size drops its last rows/columns before
the transformer and gets zeros there after folding (`unfold`/`fold` do that implicitly);
ml-cvnets resizes instead. At 256 px (the native size) every grid divides evenly.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import layers, registry

_BN_MOMENTUM = 0.9  # torch momentum 0.1.
_BN_EPS = 1e-5
# Inputs are pixels / 255 with no mean/std (MobileViTImageProcessor rescales only; Apple's
# weights also expect BGR channel order, which an InputSpec cannot express).
MOBILEVIT_MEAN = (0.0, 0.0, 0.0)
MOBILEVIT_STD = (1.0, 1.0, 1.0)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """transformers' rounding: nearest multiple of `divisor`, at most 10% below `value`."""
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * value else rounded)


def stage_widths(width: float) -> tuple[int, ...]:
  """Channels of the stem and of encoder layers 0-4 (transformers' layer_0_dim..layer_5_dim)."""
  stem = make_divisible(min(max(32 * width, 16), 64), 8, min_value=16)
  return (stem, make_divisible(64 * width, 16), make_divisible(128 * width),
          make_divisible(256 * width), make_divisible(384 * width), make_divisible(512 * width))


class ConvLayer(nn.Module):
  """`MobileViTV2ConvLayer`: conv (`convolution`), optional BatchNorm (`normalization`), swish."""
  features: int
  kernel: int = 1
  stride: int = 1
  depthwise: bool = False
  bias: bool = False
  norm: bool = True
  activation: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pad = (self.kernel - 1) // 2
    padding = ((pad, pad), (pad, pad))
    if self.depthwise:
      x = layers.DepthwiseConv(self.kernel, self.stride, padding, use_bias=self.bias,
                               dtype=self.dtype, name="convolution")(x)
    else:
      x = nn.Conv(self.features, (self.kernel, self.kernel), self.stride, padding=padding,
                  use_bias=self.bias, dtype=self.dtype, name="convolution")(x)
    if self.norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                       dtype=self.dtype, name="normalization")(x)
    return nn.swish(x) if self.activation else x


class InvertedResidual(nn.Module):
  """1x1 expand (swish), depthwise 3x3 (swish), linear 1x1 reduce; residual when shapes allow."""
  in_channels: int
  out_channels: int
  stride: int
  expand_ratio: float = 2.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = make_divisible(int(round(self.in_channels * self.expand_ratio)), 8)
    y = ConvLayer(hidden, 1, dtype=self.dtype, name="expand_1x1")(x, train)
    y = ConvLayer(hidden, 3, self.stride, depthwise=True, dtype=self.dtype,
                  name="conv_3x3")(y, train)
    y = ConvLayer(self.out_channels, 1, activation=False, dtype=self.dtype,
                  name="reduce_1x1")(y, train)
    return x + y if self.stride == 1 and self.in_channels == self.out_channels else y


class MobileNetLayer(nn.Module):
  """`MobileViTV2MobileNetLayer`: inverted residuals `layer_0..`, the first one strided."""
  in_channels: int
  out_channels: int
  stride: int
  num_blocks: int
  expand_ratio: float = 2.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = self.in_channels
    for i in range(self.num_blocks):
      x = InvertedResidual(cin, self.out_channels, self.stride if i == 0 else 1,
                           self.expand_ratio, self.dtype, name=f"layer_{i}")(x, train)
      cin = self.out_channels
    return x


def _pointwise(features: int, dtype: Any, name: str, activation: bool = False) -> ConvLayer:
  """A biased 1x1 conv without norm: transformers' attention and FFN projections."""
  return ConvLayer(features, 1, bias=True, norm=False, activation=activation, dtype=dtype,
                   name=name)


def _group_norm(eps: float, dtype: Any, name: str) -> nn.GroupNorm:
  """torch `GroupNorm(1, C)`: statistics over everything but the batch, per-channel affine."""
  return nn.GroupNorm(num_groups=1, epsilon=eps, dtype=dtype, name=name)


class LinearSelfAttention(nn.Module):
  """Separable self-attention: a softmax over patches of one query channel weights the keys
  into one context vector per pixel-in-patch, which gates ReLU(values)."""
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, P, N, C)
    qkv = _pointwise(1 + 2 * self.dim, self.dtype, "qkv_proj")(x)
    query, key, value = jnp.split(qkv, [1, 1 + self.dim], axis=-1)
    scores = jax.nn.softmax(query.astype(jnp.float32), axis=2).astype(key.dtype)
    context = jnp.sum(key * scores, axis=2, keepdims=True)
    return _pointwise(self.dim, self.dtype, "out_proj")(nn.relu(value) * context)


class FFN(nn.Module):
  dim: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _pointwise(self.hidden, self.dtype, "conv1", activation=True)(x)
    return _pointwise(self.dim, self.dtype, "conv2")(x)


class TransformerLayer(nn.Module):
  dim: int
  ffn_hidden: int
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x + LinearSelfAttention(self.dim, self.dtype, name="attention")(
        _group_norm(self.eps, self.dtype, "layernorm_before")(x))
    return x + FFN(self.dim, self.ffn_hidden, self.dtype, name="ffn")(
        _group_norm(self.eps, self.dtype, "layernorm_after")(x))


class Transformer(nn.Module):
  dim: int
  depth: int
  ffn_multiplier: int = 2
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = int(self.ffn_multiplier * self.dim // 16 * 16)
    for i in range(self.depth):
      x = TransformerLayer(self.dim, hidden, self.eps, self.dtype, name=f"layer_{i}")(x)
    return x


def unfold(x, patch: int):
  """(B, H, W, C) -> (B, patch*patch, (H//patch)*(W//patch), C), dropping a remainder."""
  b, h, w, c = x.shape
  nh, nw = h // patch, w // patch
  x = x[:, :nh * patch, :nw * patch]
  x = x.reshape(b, nh, patch, nw, patch, c).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, patch * patch, nh * nw, c)


def fold(patches, patch: int, height: int, width: int):
  """The inverse of `unfold`; rows/columns `unfold` dropped come back as zeros."""
  b, _, _, c = patches.shape
  nh, nw = height // patch, width // patch
  x = patches.reshape(b, patch, patch, nh, nw, c).transpose(0, 3, 1, 4, 2, 5)
  x = x.reshape(b, nh * patch, nw * patch, c)
  return jnp.pad(x, ((0, 0), (0, height - nh * patch), (0, width - nw * patch), (0, 0)))


class MobileViTBlock(nn.Module):
  """`MobileViTV2Layer`: strided inverted residual, local depthwise + 1x1 convs, linear-attention
  transformer over unfolded patches, GroupNorm, fold, 1x1 projection with BatchNorm."""
  in_channels: int
  out_channels: int
  attn_dim: int
  depth: int
  patch_size: int = 2
  kernel: int = 3
  expand_ratio: float = 2.0
  ffn_multiplier: int = 2
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = InvertedResidual(self.in_channels, self.out_channels, 2, self.expand_ratio, self.dtype,
                         name="downsampling_layer")(x, train)
    x = ConvLayer(self.out_channels, self.kernel, depthwise=True, dtype=self.dtype,
                  name="conv_kxk")(x, train)
    x = ConvLayer(self.attn_dim, 1, norm=False, activation=False, dtype=self.dtype,
                  name="conv_1x1")(x, train)
    h, w = x.shape[1:3]
    patches = Transformer(self.attn_dim, self.depth, self.ffn_multiplier, self.eps, self.dtype,
                          name="transformer")(unfold(x, self.patch_size))
    patches = _group_norm(self.eps, self.dtype, "layernorm")(patches)
    x = fold(patches, self.patch_size, h, w)
    return ConvLayer(self.out_channels, 1, activation=False, dtype=self.dtype,
                     name="conv_projection")(x, train)


class MobileViTV2(nn.Module):
  """NHWC images (pixels / 255) -> dict of pooled feature, patch tokens, feature map, logits.

  Attributes:
    width_multiplier: transformers' `width_multiplier` (0.5 .. 2.0 in Apple's releases).
    n_attn_blocks / base_attn_unit_dims: transformer depth and width (before the multiplier)
      of encoder layers 2-4.
    num_classes: size of the linear head `classifier` (no dropout before it, as in
      transformers); 0 means features only.
  """
  width_multiplier: float = 1.0
  n_attn_blocks: Sequence[int] = (2, 4, 3)
  base_attn_unit_dims: Sequence[int] = (128, 192, 256)
  expand_ratio: float = 2.0
  ffn_multiplier: int = 2
  patch_size: int = 2
  conv_kernel_size: int = 3
  layer_norm_eps: float = 1e-5
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    widths = stage_widths(self.width_multiplier)
    x = ConvLayer(widths[0], 3, 2, dtype=self.dtype, name="conv_stem")(x.astype(self.dtype),
                                                                        train)
    x = MobileNetLayer(widths[0], widths[1], 1, 1, self.expand_ratio, self.dtype,
                       name="layer_0")(x, train)
    x = MobileNetLayer(widths[1], widths[2], 2, 2, self.expand_ratio, self.dtype,
                       name="layer_1")(x, train)
    for i, (depth, base) in enumerate(zip(self.n_attn_blocks, self.base_attn_unit_dims)):
      x = MobileViTBlock(widths[i + 2], widths[i + 3], make_divisible(base * self.width_multiplier),
                         depth, self.patch_size, self.conv_kernel_size, self.expand_ratio,
                         self.ffn_multiplier, self.layer_norm_eps, self.dtype,
                         name=f"layer_{i + 2}")(x, train)
    out = layers.feature_map_outputs(x.astype(jnp.float32))
    if self.num_classes > 0:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(
          out["x_norm_clstoken"])
      out["logits"] = logits.astype(jnp.float32)
    return out


_INPUTS = registry.InputSpec(image_size=256, mean=MOBILEVIT_MEAN, std=MOBILEVIT_STD)
VARIANTS = {"mobilevit_v2_050": 0.5, "mobilevit_v2_075": 0.75, "mobilevit_v2_100": 1.0}
for _name, _width in VARIANTS.items():
  registry.register(_name, functools.partial(MobileViTV2, width_multiplier=_width), _INPUTS)
