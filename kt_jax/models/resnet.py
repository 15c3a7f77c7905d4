"""ResNet-18/50 in Flax linen, laid out as torchvision's v1.5 so its checkpoints load exactly.

v1.5 puts the stride of a bottleneck on its 3x3 conv (not the first 1x1), the stem max-pool
already halves the grid so stage 1 never strides, and every conv pads `k // 2` on both sides
(Flax's 'SAME' would pad stride-2 convs asymmetrically and shift the grid by a pixel).

A CNN plugs into the same distillation losses as a ViT, so it returns DINOv2's dict names:
`x_norm_clstoken` is the global-average-pooled feature and `x_norm_patchtokens` the final
feature map, row-major (the names are shared, no extra norm is applied).
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kt_jax.models import layers, registry

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=[(pad, pad)] * 2,
                 use_bias=False, kernel_init=_CONV_INIT, dtype=dtype, name=name)


def _needs_projection(x: jnp.ndarray, out_features: int, stride: int) -> bool:
  # torchvision's rule; comparing output shapes instead misses stride 2 on a 1x1 grid.
  return stride != 1 or x.shape[-1] != out_features


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  features: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = self.norm(name="bn2")(y)
    return nn.relu(y + self._shortcut(x))

  def _shortcut(self, x):
    out = self.features * self.expansion
    if not _needs_projection(x, out, self.stride):
      return x
    x = _conv(out, 1, self.stride, self.dtype, "downsample_conv")(x)
    return self.norm(name="downsample_bn")(x)


class BottleneckBlock(BasicBlock):
  """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50/101/152)."""
  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = _conv(self.features * self.expansion, 1, 1, self.dtype, "conv3")(y)
    y = self.norm(name="bn3")(y)
    return nn.relu(y + self._shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """torchvision ResNet; submodule names mirror its state-dict keys (layer1.0 -> layer1_0).

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: 'basic' or 'bottleneck'.
    width: channels of the stem and of stage 1's 3x3 convs (64 in torchvision).
    num_classes: size of the linear head `fc`; 0 means features only.
    dtype: compute dtype; params and the returned features stay float32.
  """
  stage_sizes: Sequence[int]
  block: str = "basic"
  width: int = 64
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"Unknown block {self.block!r}; expected one of {sorted(BLOCKS)}.")
    # torch BatchNorm2d: eps 1e-5, momentum 0.1 (Flax counts momentum the other way).
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    # The stem conv and pool are written for XLA:CPU's backward pass (see layers).
    x = layers.StemConv(self.width, 7, 2, 3, _CONV_INIT, self.dtype, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = layers.max_pool(x, 3, 2, 1)
    block_cls = BLOCKS[self.block]
    current, pyramid = 4, {}
    for i, depth in enumerate(self.stage_sizes):
      for j in range(depth):
        stride = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, stride, norm, self.dtype, name=f"layer{i + 1}_{j}")(x)
        current *= stride
      pyramid[layers.stride_key(current)] = x.astype(jnp.float32)
    return self._outputs(x.astype(jnp.float32), pyramid)

  def _outputs(self, feature_map, pyramid: dict):
    out = layers.feature_map_outputs(feature_map, pyramid)
    if self.num_classes > 0:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(out["x_norm_clstoken"])
      out["logits"] = logits.astype(jnp.float32)
    return out


resnet18 = registry.register(
    "resnet18", functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"))
resnet50 = registry.register(
    "resnet50", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"))
