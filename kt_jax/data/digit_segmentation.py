"""A segmentation task from real shipped images: MNIST digits pasted onto natural photos.

Each image is a crop of a shipped colour photo (`shipped.colour_photos`) with one or more
shipped MNIST digits (`shipped.mnist_digits`) pasted on at random scales and places, in a
colour contrasting with the photo beneath. Every pixel is labelled with its digit's class
(1..10 for digits 0..9) or background (0); the anti-aliased rim of a digit, where its ink
covers between `rim` and 0.5 of the pixel, is the ignore label 255 (`ignore_border=True`) or
background. A share of the images (`empty_share`) shows no digit. Test images take their
digits from `test_per_class` digits per class drawn with the seed and their backgrounds from
the right halves of the photos; train images, and the unlabelled in-domain transfer set,
from the other digits and the left halves, so the splits share no digit and no background
pixel. Deterministic per (split, count, size, seed).

Registered as the few-shot task `digit_seg` (`data.task="digit_seg"` of `finetune`): an
image's class for few-shot sampling is the mask class of the first digit pasted (1..10), or
background (0) for an image without a digit, so `labels_per_class: N` draws N images of each.
"""
import numpy as np

from kt_jax.data import shipped

NAME = "digit_seg"
BACKGROUND = 0
IGNORE = 255
CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))
NUM_CLASSES = len(CLASS_NAMES)
DEFAULTS = {"size": 64, "train_images": 1000, "test_images": 200, "max_digits": 2,
            "test_per_class": 50, "ignore_border": True, "empty_share": 0.1}


def digit_pools(test_per_class: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train digit indices, test digit indices) into `shipped.mnist_digits()`: test is
  `test_per_class` digits per class drawn with `seed`, train every other digit."""
  digits, _ = shipped.mnist_digits()
  _, test = shipped.mnist_fewshot_indices(0, test_per_class, seed)
  return np.setdiff1d(np.arange(len(digits)), test), np.sort(test)


def _background(photos, size: int, columns_of, rng) -> np.ndarray:
  photo = photos[rng.integers(len(photos))]
  lo, hi = columns_of(photo)
  side = int(rng.integers(min(size, hi - lo, photo.shape[0]) // 2 + 1,
                          min(hi - lo, photo.shape[0]) + 1))
  y = int(rng.integers(0, photo.shape[0] - side + 1))
  x = int(rng.integers(lo, hi - side + 1))
  return shipped.resize_images(photo[None, y:y + side, x:x + side], size)[0].astype(np.float32)


def compose(background: np.ndarray, digits: list, labels: list, rng, rim: float = 0.1,
            ignore_border: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 image, uint8 mask): `digits` (28x28 uint8) pasted in order onto `background`
  (float (S, S, 3)), each scaled to 40-75% of the side, at a uniform position, in a colour
  far from the photo's mean colour beneath it; later digits cover earlier ones."""
  size = background.shape[0]
  image = background.copy()
  mask = np.full((size, size), BACKGROUND, np.uint8)
  for digit, label in zip(digits, labels):
    side = int(rng.integers(int(0.4 * size), int(0.75 * size) + 1))
    ink = shipped.resize_images(digit[None, :, :, None], side)[0, :, :, 0] / 255.0
    y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
    window = image[y:y + side, x:x + side]
    beneath = window.reshape(-1, 3).mean(axis=0)
    colour = np.where(beneath > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))
    alpha = ink[..., None]
    image[y:y + side, x:x + side] = alpha * colour + (1 - alpha) * window
    region = mask[y:y + side, x:x + side]
    region[ink >= 0.5] = label + 1
    rim_pixels = (ink >= rim) & (ink < 0.5)
    region[rim_pixels] = IGNORE if ignore_border else BACKGROUND
  return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def make_split(split: str, count: int, size: int = 64, seed: int = 0, max_digits: int = 2,
               test_per_class: int = 50, ignore_border: bool = True, empty_share: float = 0.1,
               stream: int = 0):
  """(images uint8 (N, S, S, 3), masks uint8 (N, S, S), classes (N,)) of `split` ("train"
  or "test"; see the module docstring for what each draws from); an image's class is the
  mask class of its first digit, 0 when it shows none."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be train or test, got {split!r}.")
  digits, classes = shipped.mnist_digits()
  train_pool, test_pool = digit_pools(test_per_class, seed)
  pool = train_pool if split == "train" else test_pool
  photos = list(shipped.colour_photos().values())
  half = (lambda p: (0, p.shape[1] // 2)) if split == "train" else (
      lambda p: (p.shape[1] // 2, p.shape[1]))
  rng = np.random.default_rng([seed, 0 if split == "train" else 1, size, stream])
  images = np.empty((count, size, size, 3), np.uint8)
  masks = np.empty((count, size, size), np.uint8)
  first = np.zeros(count, np.int64)
  for i in range(count):
    n = 0 if rng.random() < empty_share else int(rng.integers(1, max_digits + 1))
    chosen = rng.choice(pool, n, replace=False)
    images[i], masks[i] = compose(_background(photos, size, half, rng), list(digits[chosen]),
                                  list(classes[chosen]), rng, ignore_border=ignore_border)
    if n:
      first[i] = classes[chosen[0]] + 1
  return images, masks, first


def unlabelled(count: int, size: int = 64, seed: int = 0, max_digits: int = 2,
               test_per_class: int = 50, empty_share: float = 0.1) -> np.ndarray:
  """The in-domain transfer set: train-side images (train digits, left halves; `seed` must
  be the task's so its test digits stay out) drawn with another random stream than the
  labelled train split, masks dropped."""
  images, _, _ = make_split("train", count, size, seed, max_digits, test_per_class,
                            empty_share=empty_share, stream=1)
  return images


def _pool(options: dict, seed: int):
  """The `digit_seg` few-shot task for kt_jax.data.fewshot."""
  from kt_jax.data import fewshot
  o = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
  common = dict(size=o["size"], seed=seed, max_digits=o["max_digits"],
                test_per_class=o["test_per_class"], ignore_border=o["ignore_border"],
                empty_share=o["empty_share"])
  tr_x, tr_m, tr_y = make_split("train", o["train_images"], **common)
  te_x, te_m, te_y = make_split("test", o["test_images"], **common)
  return fewshot.LabelledPool(
      NAME, fewshot.InMemorySegmentationSource(tr_x, tr_m, tr_y), tr_y,
      fewshot.InMemorySegmentationSource(te_x, te_m, te_y), CLASS_NAMES,
      kind=fewshot.SEGMENTATION, ignore_index=IGNORE)


def register() -> None:
  from kt_jax.data import fewshot
  fewshot.register_task(NAME, _pool, fewshot.SEGMENTATION)
