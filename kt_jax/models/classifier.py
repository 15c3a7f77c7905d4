"""Any registered backbone plus a linear head: the task model of task-oriented transfer.

Both ends of task distillation are classifiers: the VFM finetuned with a task head (teacher)
and the small model (student). The head reads one named backbone output, the normalised
class token by default (the pooled feature for CNNs, whose dict uses the same key), so one
wrapper serves ViTs and CNNs alike. Params: {"backbone": ..., "head": ...}; the backbone's own
outputs are passed through beside "logits" so evaluators can still read its features.
"""
import flax.linen as nn
import jax.numpy as jnp


class Classifier(nn.Module):
  backbone: nn.Module
  num_classes: int
  feature: str = "x_norm_clstoken"

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = dict(self.backbone(x, train=train))
    dtype = getattr(self.backbone, "dtype", jnp.float32)
    logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(out[self.feature])
    out["logits"] = logits.astype(jnp.float32)
    return out
