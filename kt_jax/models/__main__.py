"""`python -m kt_jax.models --list [--image-size N] [--names a,b]`: the registry with every
model's params and forward FLOPs (see `kt_jax.models.stats`)."""
import argparse
import sys

from kt_jax import errors, models
from kt_jax.models import stats


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kt_jax.models", description=__doc__)
  parser.add_argument("--list", action="store_true", required=True,
                      help="print every registered model with its params and FLOPs")
  parser.add_argument("--image-size", type=int, default=0,
                      help="input side in pixels (default: each model's own)")
  parser.add_argument("--names", default="",
                      help="comma-separated subset of the registry (default: all)")
  args = parser.parse_args(argv)
  return errors.exit_on_user_error(_run, args, prog=parser.prog)


def _run(args) -> int:
  names = [n for n in args.names.split(",") if n] or models.names()
  unknown = sorted(set(names) - set(models.names()))
  if unknown:
    raise errors.UserError(f"unknown model(s) {', '.join(unknown)}; known: "
                           f"{', '.join(models.names())}")
  if args.image_size < 0:
    raise errors.UserError("--image-size must be positive.")
  print(stats.format_table([]), flush=True)
  for name in names:  # a row at a time: the giant models take a while to lower
    print(stats.format_table([stats.model_stats(name, args.image_size)]).splitlines()[1],
          flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
