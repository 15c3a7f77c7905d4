"""Distillation losses as pure functions of arrays (no modules, no config)."""
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
