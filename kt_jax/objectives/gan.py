"""GAN pieces of taming-transformers' VQLPIPSWithDiscriminator, as pure functions.

- hinge losses: the discriminator minimises 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))),
  the generator -mean D(x_hat);
- the adaptive weight: ||d rec_loss / d W|| / (||d gan_loss / d W|| + 1e-4), clipped to
  [0, 1e4], held constant (no gradient), times `disc_weight`, where W is the generator's last
  layer (the decoder's output convolution), so neither loss drowns the other;
- `disc_factor(step, disc_start)`: 0 before `disc_start` steps, 1 from then on (taming's
  `adopt_weight`: the GAN terms join once the autoencoder reconstructs).

`last_layer_vjp` and `value_and_output_grad` get both gradients with respect to W without a
second forward pass: the generator's forward runs under `jax.vjp` in W alone, each loss's
gradient with respect to the output image comes with the loss, and is pulled back through the
last layer only.
"""
from typing import Callable

import jax
import jax.numpy as jnp


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  return -jnp.mean(logits_fake)


def disc_factor(step, disc_start: int, factor: float = 1.0) -> jax.Array:
  """`factor` from step `disc_start` on (0-based steps, as taming's global_step), else 0."""
  return jnp.where(step >= disc_start, factor, 0.0)


def adaptive_weight(rec_grad, gan_grad, disc_weight: float, delta: float = 1e-4,
                    max_weight: float = 1e4) -> jax.Array:
  """taming's calculate_adaptive_weight, from the two gradients w.r.t. the last layer."""
  norm = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                                   for x in jax.tree.leaves(tree)))
  weight = jnp.clip(norm(rec_grad) / (norm(gan_grad) + delta), 0.0, max_weight)
  return jax.lax.stop_gradient(weight) * disc_weight


def last_layer_vjp(forward: Callable, last_layer):
  """(output, pull_back, aux) for `output, aux = forward(last_layer)`.

  `pull_back(d_loss/d_output)` is d_loss/d_last_layer. Params the caller differentiates
  elsewhere stay differentiable through `output` (the vjp nests inside an outer grad).
  """
  output, pull_back, aux = jax.vjp(forward, last_layer, has_aux=True)
  return output, lambda cotangent: pull_back(cotangent)[0], aux


def value_and_output_grad(loss_fn: Callable, output):
  """(loss, aux, d loss / d output) for `loss, aux = loss_fn(output)`, from one forward pass;
  `loss` stays differentiable for an outer gradient (with respect to the generator's and
  whatever else's params `loss_fn` closes over)."""
  loss, pull_back, aux = jax.vjp(loss_fn, output, has_aux=True)
  return loss, aux, pull_back(jnp.ones_like(loss))[0]
