"""The device mesh and the shardings every stage uses: one code path for 1 CPU to a pod.

The config's `mesh` maps axis names to sizes (-1: all remaining devices). `data` always
exists and splits the batch; `fsdp`/`model` axes shard parameters by the rules in the config.
"""
import math
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axes: Mapping[str, int] | None = None) -> Mesh:
  axes = dict(axes or {"data": -1})
  if "data" not in axes:
    raise ValueError(f"The mesh needs a 'data' axis; got {axes}.")
  n = jax.device_count()
  fixed = math.prod(s for s in axes.values() if s != -1)
  sizes = {k: (n // fixed if s == -1 else s) for k, s in axes.items()}
  if math.prod(sizes.values()) != n:
    raise ValueError(f"Mesh {axes} does not cover the {n} devices ({sizes}).")
  # jax 0.10 makes Explicit axes by default; Auto lets jit propagate shardings for us.
  return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """Mesh axes the batch is split over: data, plus fsdp where present (ZeRO-style)."""
  return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def put_batch(batch, mesh: Mesh):
  """Places a host batch (a pytree of arrays, leading axis = batch) split over the data axes."""
  return jax.device_put(batch, batch_sharding(mesh))


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
  """Pads the leading axis by repeating the last row, so every batch has one static shape."""
  n = len(x)
  target = max(multiple, -(-n // multiple) * multiple)
  if target == n:
    return x, n
  return np.concatenate([x, np.repeat(x[-1:], target - n, axis=0)]), n
