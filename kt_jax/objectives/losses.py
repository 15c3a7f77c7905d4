"""Distillation losses as pure functions of arrays (no modules, no config)."""
import jax
import jax.numpy as jnp


def mse(prediction, target):
  """torch.nn.MSELoss(): the mean over every element, computed in float32."""
  diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def masked_token_mse(prediction, target, mask):
  """MSE over the tokens where `mask` is True: (B, N, D), (B, N, D), (B, N) bool.

  Equals MSELoss on the gathered masked tokens (the mean over all their elements), with a
  static shape. With no masked token the official code's MSELoss of an empty tensor is NaN;
  here the loss is 0, so a batch without masks is harmless.
  """
  diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
  weight = mask.astype(jnp.float32)[..., None]
  count = jnp.sum(mask) * prediction.shape[-1]
  return jnp.sum(jnp.square(diff) * weight) / jnp.maximum(count, 1)


def proteus_losses(student_cls, student_patch, student_masked_patch, teacher_cls, teacher_patch,
                   mask):
  """Proteus' three objectives, on head outputs already projected to the teacher's width.

  student_cls: token_head(plain-view CLS) (B, D); student_patch: fea_head(plain-view patch
  tokens) (B, N, D); student_masked_patch: patch_head(masked-view patch tokens) (B, N, D);
  mask: (B, N) bool, True where the masked view hid the patch.
  """
  token = mse(student_cls, teacher_cls)
  fea = mse(jnp.concatenate([student_cls[:, None], student_patch], axis=1),
            jnp.concatenate([teacher_cls[:, None], teacher_patch], axis=1))
  patch = masked_token_mse(student_masked_patch, teacher_patch, mask)
  return {"token_loss": token, "fea_loss": fea, "patch_loss": patch}


def distillation_kl(student_logits, teacher_logits, temperature: float = 1.0):
  """Hinton's distillation loss: KL(softmax(t/T) || softmax(s/T)) * T^2, mean over samples.

  Logits (..., C): every leading position is a sample, so segmentation logits (B, H, W, C)
  give the mean per-pixel KL. Equals PyTorch's `F.kl_div(log_softmax(s/T), softmax(t/T),
  reduction="batchmean") * T**2` on the logits flattened to (samples, C) (the form
  task-distillation code is usually written in); computed in float32. The T^2 keeps the
  gradients' scale independent of T (Hinton et al., 2015).
  """
  s = jnp.asarray(student_logits, jnp.float32) / temperature
  t = jnp.asarray(teacher_logits, jnp.float32) / temperature
  log_p_t = jax.nn.log_softmax(t, axis=-1)
  log_p_s = jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return jnp.mean(kl) * temperature ** 2


def cosine_distance(prediction, target, eps: float = 1e-8):
  """1 - cosine similarity of each (..., D) vector pair, mean over every leading position;
  computed in float32 (the norms are clamped at `eps`, as torch's F.cosine_similarity)."""
  p = prediction.astype(jnp.float32)
  t = target.astype(jnp.float32)
  norms = (jnp.maximum(jnp.linalg.norm(p, axis=-1), eps)
           * jnp.maximum(jnp.linalg.norm(t, axis=-1), eps))
  return jnp.mean(1.0 - jnp.sum(p * t, axis=-1) / norms)


FEATURE_LOSSES = {"l2": mse, "cosine": cosine_distance}
