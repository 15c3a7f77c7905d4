"""Strict assembly of Flax params from a foreign checkpoint.

Every converter reads source tensors through `SourceTensors` (which remembers what it handed
out) and writes Flax leaves by path; `assemble` then compares against the shapes the module
itself declares (`jax.eval_shape` of its init, no compute) and raises one error naming every
missing, unexpected and shape-mismatched key, so a wrong checkpoint is diagnosed in one go.
"""
import os
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kt_jax.errors import UserError


class CheckpointMismatchError(UserError):
  """A checkpoint does not fit the model: the message lists every offending key.

  `num_problems` counts the offending keys, so a caller trying several variants of a model
  can report only the closest one.
  """

  def __init__(self, message: str, num_problems: int = 0):
    super().__init__(message)
    self.num_problems = num_problems


class NotACheckpointError(UserError):
  """The file is neither a PyTorch checkpoint (zip or legacy pickle) nor safetensors."""


def checkpoint_format(path: str) -> str | None:
  """'torch_zip', 'torch_pickle' or 'safetensors' from a file's first bytes; None otherwise.

  Read before torch's unpickler sees the file, which on a text file fails with an opaque
  `KeyError` from deep inside torch.
  """
  with open(path, "rb") as f:
    head = f.read(9)
    size = os.fstat(f.fileno()).st_size
  if head[:4] == b"PK\x03\x04":
    return "torch_zip"
  if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
    return "safetensors"  # u64 little-endian header length, then the JSON header
  if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
    return "torch_pickle"  # the legacy format: a pickled magic number first
  return None


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here.
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


class SourceTensors:
  """A read-only view of a source state dict that records which keys were consumed."""

  def __init__(self, state_dict: Mapping[str, Any], strip_prefix: str = ""):
    self._tensors = {k[len(strip_prefix):] if strip_prefix and k.startswith(strip_prefix) else k: v
                     for k, v in state_dict.items()}
    self._used: set[str] = set()
    self.missing: list[str] = []

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def keys(self) -> list[str]:
    return list(self._tensors)

  def shape_of(self, key: str) -> tuple[int, ...]:
    """A tensor's shape without marking it used (for reading the architecture)."""
    return tuple(np.shape(self._tensors[key]))

  def take(self, key: str) -> np.ndarray | None:
    """Returns the tensor as float32 NumPy and marks it used; records it missing if absent."""
    if key not in self._tensors:
      self.missing.append(key)
      return None
    self._used.add(key)
    return _to_numpy(self._tensors[key]).astype(np.float32)

  def skip(self, *keys: str) -> None:
    """Marks keys as knowingly ignored (e.g. buffers the Flax model recomputes)."""
    self._used.update(k for k in keys if k in self._tensors)

  def unused(self) -> list[str]:
    return sorted(set(self._tensors) - self._used)


def expected_shapes(module: nn.Module, *init_args, **init_kwargs) -> dict[str, tuple[int, ...]]:
  """Param shapes of `module`, flattened to 'a/b/c' paths, computed without any FLOPs."""
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0), *init_args, **init_kwargs))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def assemble(expected: Mapping[str, tuple[int, ...]],
             produced: Mapping[str, np.ndarray | None],
             source: SourceTensors | None = None,
             what: str = "checkpoint") -> dict:
  """Checks `produced` ('a/b/c' -> array) against `expected` shapes and nests it.

  Raises CheckpointMismatchError listing missing source keys, Flax params no source key
  filled, source keys nothing consumed, and shape mismatches, all at once.
  """
  problems: list[str] = []
  if source is not None and source.missing:
    problems.append("missing in checkpoint: " + ", ".join(sorted(set(source.missing))))
  not_filled = sorted(k for k in expected if produced.get(k) is None)
  if not_filled and not (source is not None and source.missing):
    problems.append("model params not filled: " + ", ".join(not_filled))
  unknown = sorted(k for k in produced if k not in expected)
  if unknown:
    problems.append("params the model does not have: " + ", ".join(unknown))
  if source is not None and source.unused():
    problems.append("unexpected in checkpoint: " + ", ".join(source.unused()))
  mismatched = [f"{k} (checkpoint {tuple(v.shape)} vs model {expected[k]})"
                for k, v in produced.items()
                if v is not None and k in expected and tuple(v.shape) != expected[k]]
  if mismatched:
    problems.append("shape mismatch: " + ", ".join(mismatched))
  if problems:
    count = (len(set(source.missing) if source is not None else ()) + len(not_filled)
             + len(unknown) + len(source.unused() if source is not None else ())
             + len(mismatched))
    raise CheckpointMismatchError(f"The {what} does not fit the model:\n  " +
                                  "\n  ".join(problems), num_problems=count)
  return traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in produced.items()}, sep="/")


def load_torch_file(path: str) -> dict:
  """Loads a .pth/.pt/.bin or .safetensors state dict on the CPU, unwrapping common nests.

  The format is read from the file's first bytes, not its name.
  """
  path = str(path)
  kind = checkpoint_format(path)
  if kind is None:
    raise NotACheckpointError(f"not a PyTorch/safetensors checkpoint: {path}")
  if kind == "safetensors":
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except TypeError:  # bfloat16, which NumPy lacks: read through torch (SourceTensors casts)
      from safetensors.torch import load_file as load_torch
      return dict(load_torch(path))
  import torch
  state = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("model", "state_dict", "teacher", "module"):
    if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
      state = state[wrapper]
  return dict(state)


def first_present(source: SourceTensors, candidates: Iterable[str]) -> str | None:
  return next((k for k in candidates if k in source), None)


# --------------------------------------------------------------------------------------------
# CNN state dicts: every Flax variable (params and BatchNorm statistics) maps to one key.


def variable_shapes(module: nn.Module, image_size: int = 32,
                    collections: tuple[str, ...] = ("params", "batch_stats")
                    ) -> dict[str, tuple[int, ...]]:
  """'collection/a/b' -> shape for every leaf of `collections`, traced without compute."""
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
  flat = traverse_util.flatten_dict({c: variables[c] for c in collections if c in variables},
                                    sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def torch_to_flax(tensor: np.ndarray, expected_ndim: int) -> np.ndarray:
  """OIHW conv -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C)); (out, in) linear -> (in, out).

  A tensor of the wrong rank passes through untouched, so `assemble` reports it as a shape
  mismatch instead of this function crashing.
  """
  if tensor.ndim != expected_ndim:
    return tensor
  if tensor.ndim == 4:
    return tensor.transpose(2, 3, 1, 0)
  if tensor.ndim == 2:
    return tensor.T
  return tensor


def flax_to_torch(array: np.ndarray) -> np.ndarray:
  """The inverse of `torch_to_flax`, contiguous (safetensors writes raw buffers, not views)."""
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    array = array.transpose(3, 2, 0, 1)
  elif array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array)


def fill_by_key(source: SourceTensors, expected: Mapping[str, tuple[int, ...]],
                key_of, what: str) -> dict:
  """Fills each expected 'collection/...' leaf from the source tensor named `key_of(path)`.

  Strict, like `assemble`, and a shape error also names the checkpoint keys, which is what a
  PyTorch user will look for. BatchNorm's `num_batches_tracked` counters are ignored.
  """
  keys = {path: key_of(path) for path in expected}
  produced = {}
  for path, key in keys.items():
    tensor = source.take(key)
    produced[path] = None if tensor is None else torch_to_flax(tensor, len(expected[path]))
  source.skip(*[k for k in source.keys() if k.endswith("num_batches_tracked")])
  try:
    return assemble(expected, produced, source, what=what)
  except CheckpointMismatchError as e:
    bad = [keys[p] for p, v in produced.items()
           if v is not None and tuple(v.shape) != expected[p]]
    if not bad:
      raise
    raise CheckpointMismatchError(
        f"{e}\n  checkpoint keys with wrong shapes: {', '.join(bad)}",
        num_problems=e.num_problems) from None


def concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
  """Tensors fused along their first axis (q, k, v -> qkv). When their other dimensions
  disagree (a wrong checkpoint) the result is a placeholder of the first tensor's trailing
  shape, so `assemble` reports the leaf as mis-shaped instead of NumPy raising here."""
  if len({a.shape[1:] for a in arrays}) > 1:
    odd = next(a for a in arrays if a.shape[1:] != arrays[-1].shape[1:])
    return np.zeros((sum(len(a) for a in arrays),) + odd.shape[1:], np.float32)
  return np.concatenate(arrays, axis=0)
