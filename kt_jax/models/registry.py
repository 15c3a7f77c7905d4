"""One table from model names to module constructors, so configs name models by string.

Variants are `functools.partial`s of a single module class (as the Flax examples do), so the
registry holds no logic of its own: `create(name, **overrides)` calls the partial.
"""
import dataclasses
from typing import Callable

import flax.linen as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How a model expects its NHWC float input: (pixels/255 - mean) / std at `image_size`."""
  image_size: int = 224
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INPUTS: dict[str, InputSpec] = {}


def register(name: str, constructor: Callable[..., nn.Module],
             inputs: InputSpec = InputSpec()) -> Callable[..., nn.Module]:
  if name in _MODELS:
    raise ValueError(f"Model name {name!r} is registered twice.")
  _MODELS[name] = constructor
  _INPUTS[name] = inputs
  return constructor


def input_spec(name: str) -> InputSpec:
  _check_known(name)
  return _INPUTS[name]


def input_spec_or_default(name_or_path: str, image_size: int = 0) -> InputSpec:
  """A registered model's own spec, else ImageNet normalisation; `image_size` > 0 overrides."""
  spec = _INPUTS.get(name_or_path, InputSpec())
  return dataclasses.replace(spec, image_size=image_size) if image_size else spec


def _check_known(name: str) -> None:
  if name not in _MODELS:
    raise KeyError(f"Unknown model {name!r}. Known models: {', '.join(sorted(_MODELS))}")


def create(name: str, **overrides) -> nn.Module:
  """Builds the registered module `name`, with any constructor field overridden."""
  _check_known(name)
  return _MODELS[name](**overrides)


def names() -> list[str]:
  return sorted(_MODELS)
