"""Next-index cross-entropy over a frozen VQGAN's code grids (raster order, start token).

The batch holds `indices` (B, h*w) int32; the transformer predicts each index from the ones
before it. Metrics: `ce_loss` in nats per index and `accuracy` of the argmax.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, indices):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                  indices))


@dataclasses.dataclass
class LatentTransformerObjective:
  transformer: nn.Module

  def init(self, rng, batch):
    params = self.transformer.init(rng, batch["indices"][:1])["params"]
    return {"transformer": params}, {}

  def frozen(self):
    return {}

  def loss(self, params, model_state, frozen, batch, rng):
    indices = batch["indices"].astype(jnp.int32)
    logits = self.transformer.apply({"params": params["transformer"]}, indices, train=True,
                                    rngs={"dropout": rng})
    loss = cross_entropy(logits, indices)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == indices)
    return loss, ({"ce_loss": loss, "accuracy": accuracy}, model_state)

  def feature_model(self, params, model_state):
    return self.transformer, {"params": params["transformer"]}

  def teacher_model(self):
    return None
