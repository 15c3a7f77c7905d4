"""A perceptual distance from a frozen network's intermediate features. It is NOT LPIPS.

LPIPS compares unit-normalised VGG/AlexNet features through linear weights learnt on human
similarity judgements; those weights (and LPIPS' VGG) cannot be downloaded here. This loss
keeps LPIPS' recipe without the learnt part: features of a frozen network at several layers,
each unit-normalised over channels, squared differences summed over channels, averaged over
positions and summed over layers -- what the `lpips` package computes with `lpips=False`, on
another network. The default network is the shipped EfficientNet-Lite0 (ImageNet weights,
`kt_jax.convert.load_pretrained('efficientnet_lite0')`), read at the ends of its first five
stages (strides 2, 4, 8, 16, 16).

Pluggable: any model `load_pretrained` reads, with `layers` naming submodules by their path
in its variables (e.g. `blocks_3` of a ViT). Features are taken with Flax's
`capture_intermediates`, so the network needs no change; XLA drops whatever runs after the
deepest layer used.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models.registry import InputSpec

# EfficientNet-Lite0's last MBConv block of stages 1-5 (16, 24, 40, 80 and 112 channels).
EFFICIENTNET_LITE0_LAYERS = ("blocks_0", "blocks_2", "blocks_4", "blocks_7", "blocks_10")
DEFAULT_LAYERS = {"efficientnet_lite0": EFFICIENTNET_LITE0_LAYERS}


def unit_normalise(x: jax.Array, eps: float = 1e-10) -> jax.Array:
  """LPIPS' normalize_tensor: each position's feature vector divided by its L2 norm."""
  return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + eps)


@dataclasses.dataclass(frozen=True)
class Perceptual:
  """`distance(variables, x, y)` -> (B,) between NHWC images in [-1, 1]."""
  network: nn.Module
  layers: tuple[str, ...]
  spec: InputSpec             # how the network wants its inputs normalised
  image_size: int = 0         # > 0: images are resized (bilinear) to this size first

  def _prepare(self, images):
    x = (images.astype(jnp.float32) + 1.0) / 2.0  # [-1, 1] -> [0, 1] pixels / 255
    x = (x - jnp.asarray(self.spec.mean)) / jnp.asarray(self.spec.std)
    if self.image_size and x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]),
                           "bilinear")
    return x

  def features(self, variables, images) -> list[jax.Array]:
    wanted = set(self.layers)
    _, state = self.network.apply(
        variables, self._prepare(images),
        capture_intermediates=lambda mdl, method: method == "__call__"
        and "/".join(mdl.path) in wanted,
        mutable=["intermediates"])
    captured = dict(jax.tree_util.tree_flatten_with_path(
        state["intermediates"], is_leaf=lambda x: isinstance(x, tuple))[0])
    by_name = {"/".join(str(getattr(k, "key", k)) for k in path[:-1]): value[0]
               for path, value in captured.items()}
    missing = [name for name in self.layers if name not in by_name]
    if missing:
      raise ValueError(f"Perceptual layers {missing} are not submodules of "
                       f"{type(self.network).__name__} (path names such as 'blocks_2').")
    return [by_name[name] for name in self.layers]

  def distance(self, variables, x, y) -> jax.Array:
    both = self.features(variables, jnp.concatenate([x, y]))
    total = 0.0
    for f in both:
      fx, fy = jnp.split(unit_normalise(f.astype(jnp.float32)), 2)
      total = total + jnp.mean(jnp.sum(jnp.square(fx - fy), axis=-1), axis=(1, 2))
    return total


def load(network: str = "efficientnet_lite0", layers: tuple[str, ...] = (),
         image_size: int = 0) -> tuple[Perceptual, Any]:
  """(Perceptual, its frozen variables) for a model name or path `load_pretrained` reads;
  `layers` default to the network's entry in DEFAULT_LAYERS."""
  from kt_jax import convert
  layers = tuple(layers) or DEFAULT_LAYERS.get(network)
  if not layers:
    raise ValueError(f"Name the perceptual layers of {network!r} (no default for it; "
                     f"defaults exist for {', '.join(DEFAULT_LAYERS)}).")
  module, variables = convert.load_pretrained(network)
  return Perceptual(module, layers, convert.input_spec(network), image_size), variables
