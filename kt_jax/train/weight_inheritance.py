"""Initialise a student from a (larger) teacher's weights: the Proteus paper's ablation.

Leaves with the same path copy over; where the teacher's leaf is larger in every dimension,
its leading slice is taken (as in "weight selection", Xu et al. 2023); the rest keep their
random init. Blocks beyond the student's depth are ignored.
"""
import jax.numpy as jnp
from absl import logging
from flax import traverse_util

from kt_jax import convert


def inherit_from(student_params, teacher_params) -> tuple[dict, dict]:
  flat_s = traverse_util.flatten_dict(student_params, sep="/")
  flat_t = traverse_util.flatten_dict(teacher_params, sep="/")
  counts = {"copied": 0, "sliced": 0, "kept": 0}
  out = {}
  for path, leaf in flat_s.items():
    src = flat_t.get(path)
    if src is not None and src.shape == leaf.shape:
      out[path], kind = jnp.asarray(src, leaf.dtype), "copied"
    elif src is not None and src.ndim == leaf.ndim and all(
        t >= s for t, s in zip(src.shape, leaf.shape)):
      out[path] = jnp.asarray(src[tuple(slice(0, s) for s in leaf.shape)], leaf.dtype)
      kind = "sliced"
    else:
      out[path], kind = leaf, "kept"
    counts[kind] += 1
  return traverse_util.unflatten_dict(out, sep="/"), counts


def inherit(params: dict, checkpoint: str) -> dict:
  """params = {'student': ..., ...}: the student part initialised from `checkpoint`."""
  _, variables = convert.load_pretrained(checkpoint)
  student, counts = inherit_from(params["student"], variables["params"])
  logging.info("Weight inheritance from %s: %s", checkpoint, counts)
  return dict(params, student=student)
