"""Our own on-disk model format: `model.json` (which module, with which fields) + an orbax
checkpoint of the variables. What `python -m kt_jax.convert import` writes, what a training
stage leaves in `<workdir>/model/`, and what every stage of kt_jax can load a teacher or
student from.

`model.json` may also hold `input_spec` (image_size, mean, std the model expects), `source`,
and for task models `class_names` (the head's outputs, in order).
"""
import dataclasses
import importlib
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from kt_jax import paths

SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"


_NESTED = "module"  # a field holding a module (e.g. a classifier's backbone): {"module": spec}


def module_spec(module: nn.Module) -> dict[str, Any]:
  """A JSON-able description of a module: its class path and constructor fields."""
  fields = {}
  for f in dataclasses.fields(module):
    if f.name in ("parent", "name"):
      continue
    value = getattr(module, f.name)
    if isinstance(value, nn.Module):
      value = {_NESTED: module_spec(value)}
    elif f.name in ("dtype", "param_dtype"):
      value = jnp.dtype(value).name
    fields[f.name] = list(value) if isinstance(value, tuple) else value
  cls = type(module)
  return {"class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
  module_path, _, cls_name = spec["class"].rpartition(".")
  cls = getattr(importlib.import_module(module_path), cls_name)
  fields = dict(spec["fields"])
  for key, value in fields.items():
    if isinstance(value, dict) and set(value) == {_NESTED}:
      fields[key] = module_from_spec(value[_NESTED])
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  for f in dataclasses.fields(cls):  # JSON turns tuples into lists.
    if f.name in fields and isinstance(getattr(cls, f.name, None), tuple):
      fields[f.name] = tuple(fields[f.name])
  return cls(**fields)


def save(out_dir: str, module: nn.Module, variables: Any, extra: dict | None = None) -> None:
  """Every process calls this (orbax synchronises them); process 0 writes. `variables` must
  be host-readable (NumPy, or arrays each process holds whole)."""
  out_dir = paths.absolute(out_dir)  # local, file:// or a cloud URL (gs://...)
  paths.as_path(out_dir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    paths.as_path(out_dir).joinpath(SPEC_FILE).write_text(
        json.dumps({**module_spec(module), **(extra or {})}, indent=2))
  variables = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(paths.as_path(out_dir) / VARIABLES_DIR, variables, force=True)


def is_kt_dir(path: str) -> bool:
  root = paths.as_path(path)
  return (root / SPEC_FILE).is_file() and (root / VARIABLES_DIR).is_dir()


def read_spec(path: str) -> dict:
  return json.loads(paths.as_path(path).joinpath(SPEC_FILE).read_text())


def load(path: str) -> tuple[nn.Module, Any]:
  root = paths.as_path(paths.absolute(path))  # local, file:// or a cloud URL (gs://...)
  module = module_from_spec(read_spec(str(root)))
  with ocp.StandardCheckpointer() as ckpt:
    variables = ckpt.restore(root / VARIABLES_DIR)
  return module, jax.tree.map(jnp.asarray, variables)


def import_extras(src: str) -> dict:
  """What `model.json` records beside the module: where it came from and its input spec."""
  import dataclasses
  from kt_jax import convert
  return {"source": str(src), "input_spec": dataclasses.asdict(convert.input_spec(src))}
