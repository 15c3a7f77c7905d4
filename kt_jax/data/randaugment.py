"""RandAugment with timm's semantics (`timm/data/auto_augment.py`, `rand-m9-mstd0.5-inc1`).

Follows timm, not the paper: each of `num_ops` ops is drawn uniformly with replacement and
applied with probability 0.5; its magnitude is drawn from N(m, mstd) and clipped to
[0, 10] (uniform in [0, m] when mstd > 100); signed ops flip sign with probability 0.5;
the "increasing" set makes every op stronger as the magnitude grows. Affine ops fill with
round(255 * ImageNet mean) = (124, 116, 104) and resample bicubically, as timm does when
the train interpolation is 'bicubic' (DeiT); 'random' picks bilinear or bicubic per op,
timm's default when no interpolation is given. Ops run in PIL, like timm's.
"""
import dataclasses
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from kt_jax.data import transforms

LEVEL_DENOM = 10.0
FILL = tuple(min(255, round(255 * m)) for m in transforms.IMAGENET_DEFAULT_MEAN)

STANDARD_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX",
                "ShearY", "TranslateXRel", "TranslateYRel")
INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                  "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                  "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                  "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
              "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


def level_to_arg(name: str, magnitude: float, negate: bool = False,
                 translate_pct: float = 0.45):
  """The op argument for a (clipped) magnitude, as timm's LEVEL_TO_ARG; None if unused."""
  level = magnitude / LEVEL_DENOM
  sign = -1.0 if negate else 1.0
  if name in ("AutoContrast", "Equalize", "Invert"):
    return None
  if name == "Rotate":
    return sign * level * 30.0
  if name in ("ShearX", "ShearY"):
    return sign * level * 0.3
  if name in ("TranslateXRel", "TranslateYRel"):
    return sign * level * translate_pct
  if name == "Posterize":
    return int(level * 4)
  if name == "PosterizeIncreasing":
    return 4 - int(level * 4)
  if name == "Solarize":
    return min(256, int(level * 256))
  if name == "SolarizeIncreasing":
    return 256 - min(256, int(level * 256))
  if name == "SolarizeAdd":
    return min(128, int(level * 110))
  if name in _ENHANCERS:
    return level * 1.8 + 0.1
  if name.removesuffix("Increasing") in _ENHANCERS:
    return max(0.1, 1.0 + sign * level * 0.9)
  raise ValueError(f"Unknown RandAugment op {name!r}.")


def _affine(img, matrix, fill, resample):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample,
                       fillcolor=fill)


def apply_op(img: Image.Image, name: str, arg, fill=FILL,
             resample=Image.Resampling.BICUBIC) -> Image.Image:
  """One RandAugment op on an RGB PIL image with the argument from `level_to_arg`."""
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(arg, resample=resample, fillcolor=fill)
  if name.startswith("Posterize"):
    if arg >= 8:
      return img
    if arg <= 0:  # timm's increasing posterize reaches 0 bits at magnitude 10: older PIL
      return Image.new(img.mode, img.size)  # masked every bit (black); PIL 13 refuses 0.
    return ImageOps.posterize(img, arg)
  if name.startswith("SolarizeAdd"):
    lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))
  if name.startswith("Solarize"):
    return ImageOps.solarize(img, arg)
  if name.removesuffix("Increasing") in _ENHANCERS:
    return _ENHANCERS[name.removesuffix("Increasing")](img).enhance(arg)
  if name == "ShearX":
    return _affine(img, (1, arg, 0, 0, 1, 0), fill, resample)
  if name == "ShearY":
    return _affine(img, (1, 0, 0, arg, 1, 0), fill, resample)
  if name == "TranslateXRel":
    return _affine(img, (1, 0, arg * img.size[0], 0, 1, 0), fill, resample)
  if name == "TranslateYRel":
    return _affine(img, (1, 0, 0, 0, 1, arg * img.size[1]), fill, resample)
  raise ValueError(f"Unknown RandAugment op {name!r}.")


@dataclasses.dataclass(frozen=True)
class RandAugment(transforms.ImageRandomMap):
  """timm RandAugment on uint8 RGB HWC; defaults are `rand-m9-mstd0.5-inc1` for DeiT."""
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  magnitude_max: float = LEVEL_DENOM
  prob: float = 0.5
  increasing: bool = True
  fill: tuple[int, int, int] = FILL
  interpolation: str = "bicubic"  # or "random": bilinear/bicubic per op
  translate_pct: float = 0.45

  @property
  def ops(self) -> tuple[str, ...]:
    return INCREASING_OPS if self.increasing else STANDARD_OPS

  @classmethod
  def from_config(cls, config: str = "rand-m9-mstd0.5-inc1", **kwargs) -> "RandAugment":
    """Parses timm's config string: m (magnitude), n (ops), p, mstd, mmax, inc."""
    sections = config.split("-")
    if sections[0] != "rand":
      raise ValueError(f"Not a RandAugment config: {config!r}.")
    fields = {}
    for section in sections[1:]:
      key, value = re.match(r"([a-z]+)(.*)", section).groups()
      if key == "m":
        fields["magnitude"] = float(value)
      elif key == "n":
        fields["num_ops"] = int(value)
      elif key == "p":
        fields["prob"] = float(value)
      elif key == "mstd":
        fields["magnitude_std"] = float("inf") if float(value) > 100 else float(value)
      elif key == "mmax":
        fields["magnitude_max"] = float(value)
      elif key == "inc":
        fields["increasing"] = bool(int(value))
      else:
        raise ValueError(f"Unknown RandAugment config section {section!r}.")
    return cls(**{**fields, **kwargs})

  def sample_magnitude(self, rng: np.random.Generator) -> float:
    magnitude = self.magnitude
    if self.magnitude_std == float("inf"):
      magnitude = rng.uniform(0, magnitude)
    elif self.magnitude_std > 0:
      magnitude = rng.normal(magnitude, self.magnitude_std)
    return float(min(max(magnitude, 0.0), self.magnitude_max))

  def _resample(self, rng):
    if self.interpolation == "random":
      return (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[rng.integers(2)]
    return transforms.INTERPOLATIONS[self.interpolation]

  def apply(self, image, rng):
    img = Image.fromarray(image)
    ops = self.ops
    for _ in range(self.num_ops):
      name = ops[rng.integers(len(ops))]
      if self.prob < 1.0 and rng.random() > self.prob:
        continue
      negate = name in _SIGNED and rng.random() > 0.5
      arg = level_to_arg(name, self.sample_magnitude(rng), negate, self.translate_pct)
      img = apply_op(img, name, arg, tuple(self.fill), self._resample(rng))
    return np.asarray(img)
