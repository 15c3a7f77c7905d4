"""The crop embedder: a frozen model, jitted over this process's devices, whose features
come back L2-normalised. Each process embeds its own gallery units on its own devices (no
collective between processes), so processes with unequal work never wait for each other.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kt_jax import sharding
from kt_jax.eval import features


def local_mesh() -> Mesh:
  return Mesh(np.asarray(jax.local_devices()), ("data",))


class Embedder:
  """`embed(uint8 crops at the model's size) -> float32 (n, dim)` unit vectors; `seconds`
  accumulates the time spent in the model alone (transfer, compute and the copy back)."""

  def __init__(self, module, variables, spec, feature: str = "x_norm_clstoken",
               batch_size: int = 64):
    self.spec, self.feature = spec, feature
    self.mesh = local_mesh()
    devices = self.mesh.devices.size
    self.batch_size = -(-batch_size // devices) * devices
    self._batch = NamedSharding(self.mesh, P("data"))
    self._variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    feature_fn = features.make_feature_fn(module, spec, (feature,))

    def embed(variables, images):
      vectors = feature_fn(variables, images)[feature]
      return vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    self._fn = jax.jit(embed, out_shardings=NamedSharding(self.mesh, P()))
    self.seconds = 0.0

  def __call__(self, crops: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(crops), self.batch_size):
      batch, n = sharding.pad_to_multiple(crops[start:start + self.batch_size], self.batch_size)
      begin = time.perf_counter()
      vectors = self._fn(self._variables, jax.device_put(batch, self._batch))
      out.append(np.asarray(vectors)[:n])
      self.seconds += time.perf_counter() - begin
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def warm_up(self) -> None:
    """Compiles once, so compile time counts neither as model nor as stage throughput."""
    size = self.spec.image_size
    self._fn(self._variables, jax.device_put(
        np.zeros((self.batch_size, size, size, 3), np.uint8), self._batch)).block_until_ready()
