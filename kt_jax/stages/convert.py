"""The `convert` stage: a PyTorch checkpoint (or shipped model) -> a kt_jax model directory,
so a pipeline can import its teacher once and later stages read it by path."""
from kt_jax import convert
from kt_jax.convert import kt_format


def validate(config) -> None:
  from kt_jax.errors import UserError
  if not config.get("src"):
    raise UserError("Set --config.src=<checkpoint file or directory, or a shipped model>.")
  convert.check_source(config.src)


def run(config, workdir: str) -> dict:
  module, variables = convert.load_pretrained(config.src)
  kt_format.save(workdir, module, variables, extra=kt_format.import_extras(config.src))
  return {"src": config.src, "model": type(module).__name__, "out": workdir}
