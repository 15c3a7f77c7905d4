"""EfficientNet-Lite (lite0-2) in Flax linen, layer for layer as `efficientnet_lite_pytorch`.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and the stem
(32), head (1280) and the first and last stages' repeat counts are not scaled. Convs use TF
"SAME" padding (extra pixel bottom/right for stride 2 on even sizes), which the PyTorch port
mimics; the pretrained weights were trained on inputs scaled as (pixels - 127) / 128.
"""
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import layers, registry

_BN_MOMENTUM = 0.99  # TF convention; the PyTorch port's momentum=0.01 is the same thing.
_BN_EPS = 1e-3
_STEM = 32
_HEAD = 1280
# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) of lite0.
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
           (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
           (1, 3, 1, 6, 192, 320))
# Inputs are (pixels / 255 - mean) / std; this equals TF-Lite's (pixels - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BlockSpec(NamedTuple):
  kernel: int
  stride: int
  expand_ratio: int
  in_channels: int
  out_channels: int


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Width scaling rounded to a multiple of 8, never shrinking by more than 10% (TF's rule)."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(width: float, depth: float) -> list[BlockSpec]:
  """The MBConv blocks in order; lite keeps the first and last stage's repeats unscaled."""
  specs = []
  for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
    cin = _STEM if i == 0 else round_filters(cin, width)
    cout = round_filters(cout, width)
    if 0 < i < len(_STAGES) - 1:
      repeats = int(math.ceil(depth * repeats))
    for j in range(repeats):
      specs.append(BlockSpec(kernel, stride if j == 0 else 1, expand,
                             cin if j == 0 else cout, cout))
  return specs


def _conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1,
          groups: int = 1, dilation: int = 1) -> nn.Module:
  # lax's "SAME" pads (total // 2, total - total // 2), exactly as Conv2d*SamePadding does.
  if groups > 1 and groups == features:
    return layers.DepthwiseConv(kernel, stride, "SAME", kernel_init=_conv_init, dtype=dtype,
                                dilation=dilation, name=name)
  return nn.Conv(features, (kernel, kernel), strides=stride, padding="SAME",
                 feature_group_count=groups, use_bias=False, kernel_init=_conv_init,
                 dtype=dtype, name=name)


def _bn(train: bool, name: str, dtype: Any, momentum: float = _BN_MOMENTUM) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=_BN_EPS,
                      dtype=dtype, name=name)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand, depthwise, linear 1x1 project, stochastic-depth skip."""
  spec: BlockSpec
  drop_connect_rate: float = 0.0
  dtype: Any = jnp.float32
  bn_momentum: float = _BN_MOMENTUM
  dilation: int = 1  # of the depthwise conv (output_stride < 32)

  @nn.compact
  def __call__(self, x, train: bool = False):
    s, inputs = self.spec, x
    hidden = s.in_channels * s.expand_ratio
    if s.expand_ratio != 1:
      x = _conv(hidden, 1, "expand_conv", self.dtype)(x)
      x = jax.nn.relu6(_bn(train, "bn0", self.dtype, self.bn_momentum)(x))
    x = _conv(hidden, s.kernel, "depthwise_conv", self.dtype, s.stride, groups=hidden,
              dilation=self.dilation)(x)
    x = jax.nn.relu6(_bn(train, "bn1", self.dtype, self.bn_momentum)(x))
    x = _conv(s.out_channels, 1, "project_conv", self.dtype)(x)
    x = _bn(train, "bn2", self.dtype, self.bn_momentum)(x)
    if s.stride == 1 and s.in_channels == s.out_channels:
      # Drop connect = dropout of the whole residual branch per sample.
      x = nn.Dropout(self.drop_connect_rate, broadcast_dims=(1, 2, 3))(x, deterministic=not train)
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """NHWC normalised images -> dict of pooled feature, patch tokens, feature map, logits."""
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  num_classes: int = 1000
  dtype: Any = jnp.float32
  # The running statistics' decay (TF's 0.99). A short finetune on another domain (a few
  # hundred steps on digits) leaves 0.99**steps of the ImageNet statistics in the running
  # averages the evaluation normalises with; 0.9 (PyTorch's default) forgets them in ~50.
  bn_momentum: float = _BN_MOMENTUM
  # 32: the reference network. 16 or 8: the last strided blocks keep their input's resolution
  # and later depthwise convs dilate instead (layers.output_stride_blocks), a finer
  # feature map for dense heads with the same weights.
  output_stride: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(_STEM, 3, "conv_stem", self.dtype, stride=2)(x.astype(self.dtype))
    x = jax.nn.relu6(_bn(train, "bn0", self.dtype, self.bn_momentum)(x))
    specs = block_specs(self.width_multiplier, self.depth_multiplier)
    blocks = layers.output_stride_blocks([s.stride for s in specs], self.output_stride)
    current, pyramid = 2, {}
    for i, (spec, (stride, dilation)) in enumerate(zip(specs, blocks)):
      # Linearly deeper blocks are dropped more often, as in the reference.
      rate = self.drop_connect_rate * i / len(specs)
      x = MBConv(spec._replace(stride=stride), rate, self.dtype, self.bn_momentum, dilation,
                 name=f"blocks_{i}")(x, train)
      current *= stride
      pyramid[layers.stride_key(current)] = x
    x = _conv(_HEAD, 1, "conv_head", self.dtype)(x)
    x = jax.nn.relu6(_bn(train, "bn1", self.dtype, self.bn_momentum)(x))
    return self._outputs(x, train, pyramid)

  def _outputs(self, feature_map, train: bool, pyramid: dict):
    out = layers.feature_map_outputs(feature_map, pyramid)
    if self.num_classes > 0:
      pooled = nn.Dropout(self.dropout_rate)(out["x_norm_clstoken"], deterministic=not train)
      out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    return out


# (width, depth, resolution, dropout) from the reference's efficientnet_params.
_VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2),
             "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
             "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}

for _name, (_w, _d, _res, _drop) in _VARIANTS.items():
  registry.register(
      _name,
      functools.partial(EfficientNetLite, width_multiplier=_w, depth_multiplier=_d,
                        dropout_rate=_drop),
      registry.InputSpec(image_size=_res, mean=LITE_MEAN, std=LITE_STD))
