"""Parameter counts and forward FLOPs of registered models, without running them.

Params come from `jax.eval_shape` of the init (shapes only). FLOPs are XLA's cost analysis of
the lowered (not compiled) inference forward at batch 1: multiply-adds count as 2 FLOPs, and
elementwise work (norms, activations, softmax) is included, so figures run a few percent above
conv/matmul-only counts quoted in papers.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kt_jax.models import registry


@dataclasses.dataclass(frozen=True)
class ModelStats:
  name: str
  image_size: int
  params: int
  flops: float


def example_input(module, image_size: int) -> jax.ShapeDtypeStruct:
  """One example's input: an image, or for a sequence model over codebook indices (the latent
  transformer: `vocab_size` and `seq_len`) a full sequence of indices."""
  if hasattr(module, "vocab_size") and hasattr(module, "seq_len"):
    return jax.ShapeDtypeStruct((1, module.seq_len), jnp.int32)
  return jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)


def _variables(module, image_size: int):
  x = example_input(module, image_size)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def param_count(module, image_size: int) -> int:
  """Trainable parameters ('params' collection; BatchNorm statistics excluded)."""
  shapes = _variables(module, image_size)
  return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes["params"])))


def forward_flops(module, image_size: int) -> float:
  """XLA's FLOP count of one example's inference forward."""
  variables = _variables(module, image_size)
  x = example_input(module, image_size)
  cost = jax.jit(module.apply).lower(variables, x).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0]
  return float(cost["flops"])


def model_stats(name: str, image_size: int = 0) -> ModelStats:
  """`name` at `image_size` (0: its registered input size)."""
  size = image_size or registry.input_spec(name).image_size
  module = registry.create(name)
  if len(example_input(module, size).shape) == 2:
    size = 0  # a sequence model: no image side (its row shows "-")
  return ModelStats(name, size, param_count(module, size), forward_flops(module, size))


def format_table(rows: list[ModelStats]) -> str:
  lines = [f"{'model':<30} {'size':>5} {'params (M)':>11} {'GFLOPs':>9}"]
  lines += [f"{r.name:<30} {r.image_size or '-':>5} {r.params / 1e6:>11.2f} {r.flops / 1e9:>9.2f}"
            for r in rows]
  return "\n".join(lines)
