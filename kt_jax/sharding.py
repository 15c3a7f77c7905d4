"""The device mesh and the shardings every stage uses: one code path for 1 CPU to a pod.

The config's `mesh` maps axis names to sizes (-1: all remaining devices, for at most one axis).
`data` always exists and splits the batch; `fsdp`/`model` axes shard parameters by the rules
in the config. `{"data": 1, "fsdp": -1}` shards parameters over every device (ZeRO-3 style;
the batch is split over data x fsdp), whatever the device count.
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
  if sum(s == -1 for s in axes.values()) > 1:
    raise ValueError(f"At most one mesh axis can be -1 (all remaining devices); got {axes}.")
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
  """Places a host batch that every process holds whole (a pytree of arrays, leading axis =
  batch) split over the data axes; each process contributes only its devices' rows."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), batch)


def to_host(x) -> np.ndarray:
  """A replicated array as NumPy on every process (also when it spans several processes)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
  """Pads the leading axis by repeating the last row, so every batch has one static shape."""
  n = len(x)
  target = max(multiple, -(-n // multiple) * multiple)
  if target == n:
    return x, n
  return np.concatenate([x, np.repeat(x[-1:], target - n, axis=0)]), n


def _auto_fsdp_spec(shape, mesh: Mesh) -> P:
  """Shards the largest dimension divisible by the fsdp axis; replicates small leaves."""
  size = mesh.shape.get("fsdp", 1)
  if size == 1 or not shape or math.prod(shape) < 2**14:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % size == 0:
      return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
  return P()


def tree_shardings(tree, mesh: Mesh, rules=()):
  """NamedShardings for a pytree from (regex, spec) rules matched against 'a/b/c' leaf paths.

  The first matching rule wins; a spec is a tuple of mesh axis names/None per dimension, or
  the string "fsdp" for automatic sharding of the largest divisible dimension. Leaves no rule
  matches are replicated. The same rules serve params, optimizer state and EMA, whose paths
  contain the parameter paths.
  """
  import re
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

  def leaf_sharding(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    shape = getattr(leaf, "shape", ())
    for pattern, spec in compiled:
      if pattern.search(name):
        if spec == "fsdp":
          return NamedSharding(mesh, _auto_fsdp_spec(shape, mesh))
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def global_batch(local_batch, mesh: Mesh):
  """Each process's slice of the batch -> one global array split over the data axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
