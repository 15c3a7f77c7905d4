"""Loading the frozen teacher a distillation stage reads (`teacher.path`), once per run."""
import jax
import jax.numpy as jnp

from kt_jax import convert


def load_teacher(config, dtype):
  """The frozen teacher, held once, cast to the compute dtype once."""
  if not config.teacher.path:
    raise ValueError("Set the teacher: --config.teacher.path=<checkpoint file or directory, "
                     "or a shipped model such as efficientnet_lite0>.")
  module, variables = convert.load_pretrained(config.teacher.path)
  return cast(module, variables, dtype)


def cast(module, variables, dtype):
  """(module computing in `dtype`, variables cast to `dtype`); nested backbones too."""
  changes = {}
  if hasattr(module, "dtype"):
    changes["dtype"] = dtype
  backbone = getattr(module, "backbone", None)
  if backbone is not None and hasattr(backbone, "dtype"):
    changes["backbone"] = backbone.clone(dtype=dtype)
  module = module.clone(**changes) if changes else module
  return module, jax.tree.map(lambda x: jnp.asarray(x, dtype), variables)
