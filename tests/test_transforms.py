"""Transforms against PIL called directly, NumPy formulas and torchvision/timm arithmetic."""
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

from kt_jax.data import randaugment as ra
from kt_jax.data import transforms as T

BICUBIC = Image.Resampling.BICUBIC
FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def chelsea():
  return np.ascontiguousarray(skimage.data.chelsea())  # (300, 451, 3) uint8


def test_decode_arrays_to_rgb(chelsea):
  grey = chelsea[..., 0]
  np.testing.assert_array_equal(T.decode_image(grey), np.stack([grey] * 3, -1))
  rgba = np.concatenate([chelsea, np.full(chelsea.shape[:2] + (1,), 7, np.uint8)], -1)
  np.testing.assert_array_equal(T.decode_image(rgba), chelsea)
  deep = chelsea.astype(np.uint16) * 257 + 3  # 16-bit: the high byte is the 8-bit value
  np.testing.assert_array_equal(T.decode_image(deep), chelsea)
  with pytest.raises(TypeError):
    T.decode_image(chelsea.astype(np.float32))


def test_decode_map_marks_failures_instead_of_raising():
  out = T.Decode().map({"image": b"\x89PNG not really", "label": 3, "id": 7})
  assert out["image"] is None and out["label"] == 3 and out["id"] == 7
  assert "UnidentifiedImageError" in out["error"]
  # Later transforms pass a marked record through untouched.
  assert T.Normalize().map(out) is out
  assert T.RandomErasing(p=1.0).random_map(out, np.random.default_rng(0)) is out


def test_random_resized_crop_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(500):
    top, left, h, w = T.random_resized_crop_box(300, 451, (0.08, 1.0), (3 / 4, 4 / 3), rng)
    assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 451
    # Rounding h and w moves area and aspect by at most ~1 pixel per side.
    assert 0.08 * 300 * 451 - (h + w) <= h * w <= 300 * 451
    assert 3 / 4 - 2 / h <= w / h <= 4 / 3 + 2 / h


def test_random_resized_crop_box_falls_back_to_clamped_centre_crop():
  rng = np.random.default_rng(0)
  # scale > 1 can never fit, so torchvision's fallback runs: a 100x400 image is wider
  # than 4/3, so h = 100, w = round(100 * 4/3) = 133, centred: left = (400 - 133) // 2.
  assert T.random_resized_crop_box(100, 400, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (
      0, 133, 100, 133)
  # Taller than 3/4: w = 100, h = round(100 / (3/4)) = 133, top = (400 - 133) // 2.
  assert T.random_resized_crop_box(400, 100, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (
      133, 0, 133, 100)
  # Inside the ratio range: the whole image.
  assert T.random_resized_crop_box(100, 120, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (
      0, 0, 100, 120)


def test_random_resized_crop_is_pil_crop_then_bicubic_resize(chelsea):
  transform = T.RandomResizedCrop(64)
  out = transform.apply(chelsea, np.random.default_rng(5))
  top, left, h, w = T.random_resized_crop_box(300, 451, transform.scale, transform.ratio,
                                              np.random.default_rng(5))
  expected = Image.fromarray(chelsea[top:top + h, left:left + w]).resize((64, 64), BICUBIC)
  np.testing.assert_array_equal(out, np.asarray(expected))


def test_horizontal_flip(chelsea):
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0).apply(chelsea, rng),
                                chelsea[:, ::-1])
  assert T.RandomHorizontalFlip(0.0).apply(chelsea, rng) is chelsea
  small = chelsea[:2, :3]
  flips = [T.RandomHorizontalFlip(0.5).apply(small, rng) is not small for _ in range(4000)]
  assert abs(np.mean(flips) - 0.5) < 0.03


def test_resize_centre_crop_matches_timm_eval_arithmetic(chelsea):
  # 224 / 0.875 = 256 on the short side (300 -> 256, 451 -> int(256 * 451 / 300) = 384),
  # then a centred 224 crop: left = round((384 - 224) / 2) = 80, top = 16.
  expected = Image.fromarray(chelsea).resize((384, 256), BICUBIC).crop((80, 16, 304, 240))
  np.testing.assert_array_equal(T.ResizeCenterCrop(224).apply(chelsea),
                                np.asarray(expected))
  tall = np.ascontiguousarray(np.swapaxes(chelsea, 0, 1))  # (451, 300)
  expected = Image.fromarray(tall).resize((256, 384), BICUBIC).crop((16, 80, 240, 304))
  np.testing.assert_array_equal(T.ResizeCenterCrop(224).apply(tall), np.asarray(expected))


def test_normalize_formula(chelsea):
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  out = T.Normalize().apply(chelsea)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, (chelsea / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def _erased_box(before, after):
  rows, cols = np.nonzero(np.any(before != after, axis=-1))
  return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_random_erasing_pixel_mode_box_and_noise():
  image = np.full((60, 80, 3), 5.0, np.float32)  # Not a value noise hits exactly.
  rng = np.random.default_rng(1)
  areas, aspects, noise = [], [], []
  for _ in range(300):
    out = T.RandomErasing(p=1.0, mode="pixel").apply(image, rng)
    if out is image:  # 10 misses: timm leaves the image alone.
      continue
    r0, r1, c0, c1 = _erased_box(image, out)
    h, w = r1 - r0, c1 - c0
    # The whole box changed, nothing outside it.
    assert np.all(out[r0:r1, c0:c1] != 5.0) and np.sum(out != image) == h * w * 3
    areas.append(h * w / image[..., 0].size)
    aspects.append(h / w)
    noise.append(out[r0:r1, c0:c1].ravel())
  noise = np.concatenate(noise)
  assert len(areas) > 250
  assert 0.02 - 0.01 <= min(areas) and max(areas) <= 1 / 3 + 0.03
  assert 0.3 * 0.8 <= min(aspects) and max(aspects) <= 1 / 0.3 * 1.25
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02


def test_random_erasing_probability_and_const_mode():
  image = np.full((8, 8, 3), 5.0, np.float32)
  rng = np.random.default_rng(0)
  hits = [T.RandomErasing(p=0.25).apply(image, rng) is not image for _ in range(4000)]
  assert abs(np.mean(hits) - 0.25) < 0.03
  out = T.RandomErasing(p=1.0, mode="const").apply(np.full((40, 40, 3), 5.0, np.float32),
                                                   np.random.default_rng(3))
  assert set(np.unique(out)) == {0.0, 5.0}


# --- RandAugment -----------------------------------------------------------------------

# timm's LEVEL_TO_ARG, written out per op for a magnitude m in [0, 10].
_FORMULAS = {
    "Rotate": lambda m: m / 10 * 30,
    "ShearX": lambda m: m / 10 * 0.3,
    "ShearY": lambda m: m / 10 * 0.3,
    "TranslateXRel": lambda m: m / 10 * 0.45,
    "TranslateYRel": lambda m: m / 10 * 0.45,
    "Posterize": lambda m: math.floor(m / 10 * 4),
    "PosterizeIncreasing": lambda m: 4 - math.floor(m / 10 * 4),
    "Solarize": lambda m: min(256, math.floor(m / 10 * 256)),
    "SolarizeIncreasing": lambda m: 256 - min(256, math.floor(m / 10 * 256)),
    "SolarizeAdd": lambda m: min(128, math.floor(m / 10 * 110)),
    "Color": lambda m: m / 10 * 1.8 + 0.1,
    "ContrastIncreasing": lambda m: 1 + m / 10 * 0.9,
    "BrightnessIncreasing": lambda m: 1 + m / 10 * 0.9,
}


@pytest.mark.parametrize("name", sorted(_FORMULAS))
@pytest.mark.parametrize("magnitude", [0.0, 2.5, 5.0, 9.0, 10.0])
def test_level_to_arg_formula(name, magnitude):
  assert ra.level_to_arg(name, magnitude) == pytest.approx(_FORMULAS[name](magnitude))


def test_level_to_arg_signs():
  assert ra.level_to_arg("Rotate", 9, negate=True) == pytest.approx(-27.0)
  assert ra.level_to_arg("TranslateYRel", 9, negate=True) == pytest.approx(-0.405)
  # Increasing enhancements go below 1 when negated and never below 0.1.
  assert ra.level_to_arg("ColorIncreasing", 9, negate=True) == pytest.approx(0.19)
  assert ra.level_to_arg("SharpnessIncreasing", 10, negate=True) == pytest.approx(0.1)
  assert ra.level_to_arg("Equalize", 9) is None


def _affine(img, matrix):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=BICUBIC,
                       fillcolor=FILL)


def _solarize_add(img, add):
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * 3)


# What each op must produce at magnitude 9 (not negated), by PIL called directly.
_AT_M9 = {
    "AutoContrast": ImageOps.autocontrast,
    "Equalize": ImageOps.equalize,
    "Invert": ImageOps.invert,
    "Rotate": lambda im: im.rotate(27.0, resample=BICUBIC, fillcolor=FILL),
    "PosterizeIncreasing": lambda im: ImageOps.posterize(im, 1),
    "Posterize": lambda im: ImageOps.posterize(im, 3),
    "SolarizeIncreasing": lambda im: ImageOps.solarize(im, 26),
    "Solarize": lambda im: ImageOps.solarize(im, 230),
    "SolarizeAdd": lambda im: _solarize_add(im, 99),
    "ColorIncreasing": lambda im: ImageEnhance.Color(im).enhance(1.81),
    "ContrastIncreasing": lambda im: ImageEnhance.Contrast(im).enhance(1.81),
    "BrightnessIncreasing": lambda im: ImageEnhance.Brightness(im).enhance(1.81),
    "SharpnessIncreasing": lambda im: ImageEnhance.Sharpness(im).enhance(1.81),
    "Color": lambda im: ImageEnhance.Color(im).enhance(1.72),
    "Contrast": lambda im: ImageEnhance.Contrast(im).enhance(1.72),
    "Brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.72),
    "Sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(1.72),
    "ShearX": lambda im: _affine(im, (1, 0.27, 0, 0, 1, 0)),
    "ShearY": lambda im: _affine(im, (1, 0, 0, 0.27, 1, 0)),
    "TranslateXRel": lambda im: _affine(im, (1, 0, 0.405 * im.size[0], 0, 1, 0)),
    "TranslateYRel": lambda im: _affine(im, (1, 0, 0, 0, 1, 0.405 * im.size[1])),
}


def test_op_sets_are_timms():
  assert set(ra.INCREASING_OPS) | set(ra.STANDARD_OPS) == set(_AT_M9)
  assert len(ra.INCREASING_OPS) == len(ra.STANDARD_OPS) == 15


@pytest.mark.parametrize("name", sorted(_AT_M9))
def test_each_op_matches_pil(name, chelsea):
  img = Image.fromarray(chelsea)
  out = ra.apply_op(img, name, ra.level_to_arg(name, 9.0))
  expected = np.asarray(_AT_M9[name](img))
  np.testing.assert_array_equal(np.asarray(out), expected)
  if name not in ("Equalize", "AutoContrast"):  # Ops that can be identities on a photo.
    assert not np.array_equal(expected, chelsea)


def test_from_config_is_deit_setting():
  aug = ra.RandAugment.from_config("rand-m9-mstd0.5-inc1")
  assert (aug.num_ops, aug.magnitude, aug.magnitude_std, aug.prob, aug.increasing) == (
      2, 9.0, 0.5, 0.5, True)
  assert aug.ops == ra.INCREASING_OPS and aug.fill == FILL
  assert ra.RandAugment.from_config("rand-m7-n3-mstd101-inc0").magnitude_std == math.inf
  with pytest.raises(ValueError):
    ra.RandAugment.from_config("rand-q3")


def test_magnitude_is_gaussian_and_clipped():
  aug = ra.RandAugment()
  rng = np.random.default_rng(0)
  draws = np.array([aug.sample_magnitude(rng) for _ in range(20000)])
  assert draws.max() == 10.0 and draws.min() >= 0
  assert abs(draws.mean() - 9.0) < 0.02  # Clipping at 10 (2.3% mass) moves it by ~0.004.
  assert abs(np.std(draws[draws < 10]) - 0.5) < 0.05


def test_randaugment_output_is_one_of_the_ops(chelsea):
  """With one op, p=1 and a fixed magnitude, the result is exactly one op's output."""
  small = np.asarray(Image.fromarray(chelsea).resize((64, 48)))
  img = Image.fromarray(small)
  candidates = {}
  for name in ra.INCREASING_OPS:
    for negate in (False, True):
      out = np.asarray(ra.apply_op(img, name, ra.level_to_arg(name, 9.0, negate)))
      candidates[out.tobytes()] = name
  aug = ra.RandAugment(num_ops=1, magnitude_std=0.0, prob=1.0)
  rng = np.random.default_rng(0)
  seen = {candidates[aug.apply(small, rng).tobytes()] for _ in range(300)}
  assert len(seen) >= 12  # Uniform over 15 ops; some coincide on this image.
  unchanged = ra.RandAugment(prob=0.0).apply(small, rng)
  np.testing.assert_array_equal(unchanged, small)


def test_posterize_to_zero_bits_is_black_as_old_pil():
  """timm's PosterizeIncreasing reaches 0 bits at magnitude 10; old PIL gave black there."""
  from PIL import Image
  from kt_jax.data import randaugment
  img = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
  out = np.asarray(randaugment.apply_op(img, "PosterizeIncreasing", 0, (0, 0, 0),
                                        Image.BICUBIC))
  assert out.shape == (4, 4, 3) and not out.any()


def test_segmentation_transforms_keep_image_and_mask_aligned():
  """An image whose red channel is 40 x its mask label: after the joint crop, flip and resize
  (nearest for both here) every pixel still carries its own label."""
  from kt_jax.data import seg_transforms
  rng = np.random.default_rng(0)
  mask = rng.integers(0, 5, (8, 8)).repeat(6, 0).repeat(6, 1).astype(np.uint8)
  image = np.stack([mask * 40, mask, mask], -1).astype(np.uint8)
  record = {"image": image, "mask": mask, "id": 0}
  for seed in range(5):
    r = np.random.default_rng(seed)
    out = seg_transforms.JointRandomResizedCrop(24, interpolation="nearest").random_map(record, r)
    out = seg_transforms.JointHorizontalFlip(0.5).random_map(out, r)
    assert out["image"].shape == (24, 24, 3) and out["mask"].shape == (24, 24)
    np.testing.assert_array_equal(out["image"][..., 0], out["mask"].astype(np.uint8) * 40)
  out = seg_transforms.JointResize(16, interpolation="nearest").map(record)
  np.testing.assert_array_equal(out["image"][..., 0], out["mask"] * 40)


def test_joint_resize_scores_masks_at_their_own_size():
  """`mask_size`: the image at the model's size, the mask at another (nearest: each label of a
  block-constant 8x8 mask, made 48 px, lands on its own 2x2 block at 16 px)."""
  from kt_jax.data import seg_transforms
  labels = np.random.default_rng(1).integers(0, 5, (8, 8)).astype(np.uint8)
  mask = labels.repeat(6, 0).repeat(6, 1)
  record = {"image": np.stack([mask * 40] * 3, -1), "mask": mask, "id": 0}
  out = seg_transforms.JointResize(8, interpolation="nearest", mask_size=16).map(record)
  assert out["image"].shape == (8, 8, 3)
  np.testing.assert_array_equal(out["image"][..., 0], labels * 40)
  np.testing.assert_array_equal(out["mask"], labels.repeat(2, 0).repeat(2, 1))
  same = seg_transforms.JointResize(8, interpolation="nearest").map(record)
  np.testing.assert_array_equal(same["mask"], labels)
