"""Mixup and CutMix between the images of a batch, on device, without labels.

Function matching (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent") distils on mixed images: the teacher labels whatever the student sees, so the
mixed image needs no mixed label. timm's batch mode: one lambda ~ Beta(alpha, alpha) per
batch, each image mixed with the batch reversed (`x.flip(0)`); with both alphas set, CutMix
is chosen with probability `switch_prob`. CutMix's box has area (1 - lambda) of the image
(timm's `rand_bbox`, clipped at the borders).
"""
import jax
import jax.numpy as jnp


def mix(rng, images, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5):
  """images (B, H, W, C) -> the same batch mixed with its reverse; unchanged if both alphas
  are 0. Pure and jit-able: every random draw comes from `rng`."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images
  k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 4)
  partner = images[::-1]
  mixed = None
  if mixup_alpha > 0:
    lam = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha)
    mixed = lam * images + (1 - lam) * partner
  if cutmix_alpha > 0:
    lam = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha)
    box = cutmix_box(k_box, images.shape[1], images.shape[2], lam)
    cut = jnp.where(box[None, :, :, None], partner, images)
    mixed = cut if mixed is None else jnp.where(
        jax.random.uniform(k_switch) < switch_prob, cut, mixed)
  return mixed.astype(images.dtype)


def cutmix_box(rng, height: int, width: int, lam):
  """(H, W) bool: True inside a box of side sqrt(1 - lam) x the image's, centred uniformly
  and clipped at the borders (timm's `rand_bbox`)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  k_y, k_x = jax.random.split(rng)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
