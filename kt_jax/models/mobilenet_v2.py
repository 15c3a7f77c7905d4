"""torchvision's MobileNetV2 in Flax linen, so its ImageNet weights import one to one.

Flax module names follow torchvision's `features.N` indices; inside a block the Sequential
indices become names (`expand`, `depthwise`, `project_conv`, `project_bn`). Convs pad
symmetrically by (k - 1) // 2 as PyTorch does, not TF "SAME".
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import layers, registry

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
_BN_EPS = 1e-5
# (expand_ratio, out_channels, repeats, first_stride), torchvision's inverted_residual_setting.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
_STEM = 32
_HEAD = 1280

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's channel rounding: nearest multiple of 8, at most 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def block_specs(width: float) -> list[tuple[int, int, int, int]]:
  """(in_channels, out_channels, stride, expand_ratio) of features.1 .. features.17."""
  cin, specs = make_divisible(_STEM * width), []
  for expand, channels, repeats, stride in _SETTING:
    cout = make_divisible(channels * width)
    for j in range(repeats):
      specs.append((cin, cout, stride if j == 0 else 1, expand))
      cin = cout
  return specs


class ConvBNReLU6(nn.Module):
  """torchvision's Conv2dNormActivation(activation=ReLU6): `conv` is .0, `bn` is .1."""
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  activation: bool = True
  dtype: Any = jnp.float32
  dilation: int = 1  # depthwise only (output_stride < 32)

  @nn.compact
  def __call__(self, x, train: bool = False):
    pad = (self.kernel - 1) // 2 * self.dilation
    if self.groups > 1 and self.groups == self.features:
      conv = layers.DepthwiseConv(self.kernel, self.stride, ((pad, pad), (pad, pad)),
                                  kernel_init=_conv_init, dtype=self.dtype,
                                  dilation=self.dilation, name="conv")
    else:
      conv = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                     padding=((pad, pad), (pad, pad)), feature_group_count=self.groups,
                     use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name="conv")
    x = conv(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                     dtype=self.dtype, name="bn")(x)
    return jax.nn.relu6(x) if self.activation else x


class InvertedResidual(nn.Module):
  """1x1 expand (absent when expand_ratio is 1), depthwise 3x3, linear 1x1 project."""
  in_channels: int
  out_channels: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32
  dilation: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    inputs = x
    hidden = int(round(self.in_channels * self.expand_ratio))
    if self.expand_ratio != 1:
      x = ConvBNReLU6(hidden, 1, dtype=self.dtype, name="expand")(x, train)
    x = ConvBNReLU6(hidden, 3, self.stride, groups=hidden, dtype=self.dtype,
                    dilation=self.dilation, name="depthwise")(x, train)
    x = nn.Conv(self.out_channels, (1, 1), use_bias=False, kernel_init=_conv_init,
                dtype=self.dtype, name="project_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                     dtype=self.dtype, name="project_bn")(x)
    if self.stride == 1 and self.in_channels == self.out_channels:
      x = x + inputs
    return x


class MobileNetV2(nn.Module):
  """NHWC normalised images -> dict of pooled feature, patch tokens, feature map, logits."""
  width_multiplier: float = 1.0
  dropout_rate: float = 0.2
  num_classes: int = 1000
  dtype: Any = jnp.float32
  # 32: torchvision's network. 16 or 8: the last strided blocks keep their input's resolution
  # and later depthwise convs dilate instead (DeepLab; transformers' MobileNetV2 rule), a
  # finer feature map for dense heads with the same weights.
  output_stride: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ConvBNReLU6(make_divisible(_STEM * self.width_multiplier), 3, 2, dtype=self.dtype,
                    name="features_0")(x.astype(self.dtype), train)
    specs = block_specs(self.width_multiplier)
    blocks = layers.output_stride_blocks([sp[2] for sp in specs], self.output_stride)
    current, pyramid = 2, {}
    for i, ((cin, cout, _, expand), (stride, dilation)) in enumerate(zip(specs, blocks),
                                                                      start=1):
      x = InvertedResidual(cin, cout, stride, expand, dtype=self.dtype, dilation=dilation,
                           name=f"features_{i}")(x, train)
      current *= stride
      pyramid[layers.stride_key(current)] = x
    head = make_divisible(_HEAD * max(1.0, self.width_multiplier))
    x = ConvBNReLU6(head, 1, dtype=self.dtype, name=f"features_{len(specs) + 1}")(x, train)
    return self._outputs(x, train, pyramid)

  def _outputs(self, feature_map, train: bool, pyramid: dict):
    out = layers.feature_map_outputs(feature_map, pyramid)
    if self.num_classes > 0:
      pooled = nn.Dropout(self.dropout_rate)(out["x_norm_clstoken"], deterministic=not train)
      out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(pooled)
    return out


registry.register("mobilenet_v2", functools.partial(MobileNetV2),
                  registry.InputSpec(image_size=224, mean=registry.IMAGENET_MEAN,
                                     std=registry.IMAGENET_STD))
