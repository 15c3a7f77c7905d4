"""Per-record grain transforms for the DeiT/Proteus image recipe.

A record is a dict {"image", "label", "id"}. `Decode` turns encoded bytes (or arrays) into
uint8 RGB HWC; a record it cannot decode keeps `image=None` plus an `error` string, every
later transform passes it through untouched, and the loader drops and counts it (see
`pipeline.py`), so one bad file never stops a run.

Random transforms are `grain.transforms.RandomMap`s: their randomness comes only from the
per-record generator grain derives from the pipeline seed and the record's position, so a
pipeline is reproducible and resumable. Each transform's `apply` works on a bare array, so
it can be tested on its own.
"""
import dataclasses
import io
import math

import grain
import numpy as np
from PIL import Image, ImageOps

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

_16BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
  if img.mode in _16BIT_MODES:
    # PIL's convert('RGB') clips 16-bit values at 255; keep the high byte instead, as
    # OpenCV and tf.image do when they read a 16-bit PNG as uint8.
    grey = (np.clip(np.asarray(img), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.mode == "F":
    grey = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  # Alpha is dropped, as torchvision's/timm's loader (`convert('RGB')`) does; CMYK,
  # palette and 1-bit images go through PIL's own conversion.
  return np.array(img.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  if image.dtype != np.uint8:
    raise TypeError(f"Expected a uint8 or uint16 image array, got {image.dtype}.")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Expected an (H, W[, 1|3|4]) image, got shape {image.shape}.")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def decode_image(data) -> np.ndarray:
  """Encoded bytes (or an array) -> uint8 RGB (H, W, 3); raises on anything unreadable."""
  if isinstance(data, np.ndarray):
    if data.ndim != 1:
      return _array_to_rgb(data)
    data = data.tobytes()  # A 1-D buffer holding encoded bytes.
  if not data:
    raise ValueError("Empty record (zero bytes).")
  with Image.open(io.BytesIO(data)) as img:
    img.load()  # Truncated or corrupt data raises here rather than later.
    # Cameras store rotation in EXIF; apply it so the pixels are upright.
    return _pil_to_rgb(ImageOps.exif_transpose(img))


class ImageMap(grain.transforms.Map):
  """Applies `apply(image)` to record["image"]; undecodable records pass through."""

  def apply(self, image: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def map(self, record):
    if record.get("image") is None:
      return record
    return {**record, "image": self.apply(record["image"])}


class ImageRandomMap(grain.transforms.RandomMap):
  """Applies `apply(image, rng)` with grain's per-record rng; skips undecodable records."""

  def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    raise NotImplementedError

  def random_map(self, record, rng: np.random.Generator):
    if record.get("image") is None:
      return record
    return {**record, "image": self.apply(record["image"], rng)}


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Bytes -> uint8 RGB HWC. A failure marks the record (image=None, error=...) instead of
  raising, so the loader can drop and count it (grain would otherwise stop the epoch)."""

  def map(self, record):
    try:
      image = decode_image(record["image"])
    except Exception as e:  # pylint: disable=broad-except
      return {**record, "image": None, "error": f"{type(e).__name__}: {e}"}
    return {**record, "image": image}


def _size_hw(size) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def random_resized_crop_box(height: int, width: int, scale, ratio,
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, h, w) as torchvision's RandomResizedCrop.get_params: 10 tries at a random
  area and log-uniform aspect, then a centre crop clamped to the ratio range."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(ImageRandomMap):
  """torchvision/timm RandomResizedCrop: crop the box, then resize it with PIL."""
  size: int | tuple[int, int]
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  interpolation: str = "bicubic"

  def apply(self, image, rng):
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], self.scale,
                                              self.ratio, rng)
    out_h, out_w = _size_hw(self.size)
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return np.asarray(crop.resize((out_w, out_h), INTERPOLATIONS[self.interpolation]))


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(ImageRandomMap):
  p: float = 0.5

  def apply(self, image, rng):
    return image[:, ::-1] if rng.random() < self.p else image


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop(ImageMap):
  """timm's eval transform: resize the short side to floor(size / crop_pct) (torchvision
  Resize(int) rounding), then a centre crop of `size` (torchvision CenterCrop offsets)."""
  size: int
  crop_pct: float = 0.875
  interpolation: str = "bicubic"

  def apply(self, image):
    height, width = image.shape[:2]
    short_target = math.floor(self.size / self.crop_pct)
    if width <= height:
      new_w, new_h = short_target, int(short_target * height / width)
    else:
      new_w, new_h = int(short_target * width / height), short_target
    img = Image.fromarray(image).resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
    top = int(round((new_h - self.size) / 2.0))
    left = int(round((new_w - self.size) / 2.0))
    return np.asarray(img.crop((left, top, left + self.size, top + self.size)))


@dataclasses.dataclass(frozen=True)
class Normalize(ImageMap):
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std, as ToTensor + Normalize."""
  mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
  std: tuple[float, ...] = IMAGENET_DEFAULT_STD

  def apply(self, image):
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return (image.astype(np.float32) / np.float32(255.0) - mean) / std


@dataclasses.dataclass(frozen=True)
class RandomErasing(ImageRandomMap):
  """timm's RandomErasing (one box, applied after normalisation). mode 'pixel' fills the
  box with per-pixel N(0, 1) noise, 'rand' with one N(0, 1) colour, 'const' with zeros.
  The box's area is uniform in [min_area, max_area] of the image and its log-aspect uniform
  in [log min_aspect, log max_aspect]; it must fit strictly inside, 10 tries, else skip."""
  p: float = 0.25
  mode: str = "pixel"
  min_area: float = 0.02
  max_area: float = 1 / 3
  min_aspect: float = 0.3
  max_aspect: float | None = None

  def __post_init__(self):
    if self.mode not in ("pixel", "rand", "const"):
      raise ValueError(f"mode must be pixel, rand or const, got {self.mode!r}.")

  def apply(self, image, rng):
    if rng.random() > self.p:
      return image
    height, width, channels = image.shape
    max_aspect = self.max_aspect or 1 / self.min_aspect
    log_aspect = (math.log(self.min_aspect), math.log(max_aspect))
    for _ in range(10):
      target_area = rng.uniform(self.min_area, self.max_area) * height * width
      aspect = math.exp(rng.uniform(*log_aspect))
      h = int(round(math.sqrt(target_area * aspect)))
      w = int(round(math.sqrt(target_area / aspect)))
      if w < width and h < height:
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        out = np.array(image, dtype=np.float32)
        if self.mode == "pixel":
          fill = rng.standard_normal((h, w, channels), dtype=np.float32)
        elif self.mode == "rand":
          fill = rng.standard_normal((1, 1, channels), dtype=np.float32)
        else:
          fill = np.float32(0)
        out[top:top + h, left:left + w] = fill
        return out
    return image
