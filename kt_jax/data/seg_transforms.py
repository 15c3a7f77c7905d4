"""Grain transforms for segmentation records {"image", "mask", ...}: geometry applied to both.

The image is resampled as in the classification recipe (bicubic); the mask, an (H, W) integer
label map, with nearest-neighbour so no label is invented at a boundary. Photometric
transforms (`transforms.Normalize`) touch the image only and work unchanged. Undecodable
records (image=None) pass through, as everywhere.
"""
import dataclasses

import grain
import numpy as np
from PIL import Image

from kt_jax.data import transforms as T


def _resize_image(image, out_hw, interpolation: str):
  out_h, out_w = out_hw
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (out_w, out_h), T.INTERPOLATIONS[interpolation]))


def _resize_mask(mask, out_hw):
  out_h, out_w = out_hw
  return np.asarray(Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8))).resize(
      (out_w, out_h), Image.Resampling.NEAREST))


def _resize_pair(image, mask, out_hw, interpolation: str):
  return _resize_image(image, out_hw, interpolation), _resize_mask(mask, out_hw)


def mask_of(record) -> np.ndarray:
  mask = np.asarray(record["mask"])
  if mask.dtype != np.uint8:
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
      raise ValueError(f"Segmentation masks hold labels 0..255; got {mask.min()}..{mask.max()}.")
    mask = mask.astype(np.uint8)
  return mask


@dataclasses.dataclass(frozen=True)
class JointRandomResizedCrop(grain.transforms.RandomMap):
  """torchvision's RandomResizedCrop box, cut from image and mask alike, resized to `size`."""
  size: int
  scale: tuple[float, float] = (0.5, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  interpolation: str = "bicubic"

  def random_map(self, record, rng: np.random.Generator):
    if record.get("image") is None:
      return record
    image, mask = record["image"], mask_of(record)
    top, left, h, w = T.random_resized_crop_box(image.shape[0], image.shape[1], self.scale,
                                                self.ratio, rng)
    image, mask = _resize_pair(image[top:top + h, left:left + w], mask[top:top + h, left:left + w],
                               (self.size, self.size), self.interpolation)
    return {**record, "image": image, "mask": mask}


@dataclasses.dataclass(frozen=True)
class JointHorizontalFlip(grain.transforms.RandomMap):
  p: float = 0.5

  def random_map(self, record, rng: np.random.Generator):
    if record.get("image") is None or rng.random() >= self.p:
      return record
    return {**record, "image": record["image"][:, ::-1], "mask": mask_of(record)[:, ::-1]}


@dataclasses.dataclass(frozen=True)
class JointResize(grain.transforms.Map):
  """Evaluation: the whole image resized to `size` x `size` and its mask to `mask_size` x
  `mask_size` (0: `size`); no crop, so every labelled pixel is scored."""
  size: int
  interpolation: str = "bicubic"
  mask_size: int = 0

  def map(self, record):
    if record.get("image") is None:
      return record
    mask_side = self.mask_size or self.size
    image = _resize_image(record["image"], (self.size, self.size), self.interpolation)
    mask = _resize_mask(mask_of(record), (mask_side, mask_side))
    return {**record, "image": image, "mask": mask}


def train_transforms(image_size: int, scale=(0.5, 1.0), hflip: float = 0.5,
                     mean=T.IMAGENET_DEFAULT_MEAN, std=T.IMAGENET_DEFAULT_STD) -> list:
  recipe = [T.Decode(), JointRandomResizedCrop(image_size, scale=tuple(scale))]
  if hflip > 0:
    recipe.append(JointHorizontalFlip(hflip))
  return recipe + [T.Normalize(mean, std)]


def eval_transforms(image_size: int, mean=T.IMAGENET_DEFAULT_MEAN,
                    std=T.IMAGENET_DEFAULT_STD, mask_size: int = 0) -> list:
  """`mask_size`: the masks' side (0: `image_size`); the model's logits are upsampled to it."""
  return [T.Decode(), JointResize(image_size, mask_size=mask_size), T.Normalize(mean, std)]
