"""A one-block ViT-Tiny saved as a kt_jax model directory, with weights drawn in NumPy from
the parameter shapes (jax.eval_shape): no init compilation, so retrieval tests start fast."""
import jax
import jax.numpy as jnp
import numpy as np

from kt_jax import models
from kt_jax.convert import kt_format


def save_tiny_vit(path: str, image_size: int = 32) -> str:
  module = models.create("vit_tiny_patch16", depth=1)
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(s.dtype),
                           shapes)
  kt_format.save(path, module, variables)
  return path
