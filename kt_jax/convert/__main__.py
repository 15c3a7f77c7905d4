"""Command line: `python -m kt_jax.convert import|export ...`.

  import --src <file|dir|shipped name> --out <dir>   PyTorch -> kt_jax model directory
  export --src <kt_jax dir> --out <dir|file> --format hf|dinov2
"""
import argparse
import sys

from kt_jax import convert
from kt_jax.convert import kt_format


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kt_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="PyTorch checkpoint -> kt_jax model directory")
  imp.add_argument("--src", required=True)
  imp.add_argument("--out", required=True)
  exp = sub.add_parser("export", help="kt_jax model directory -> PyTorch layouts")
  exp.add_argument("--src", required=True)
  exp.add_argument("--out", required=True)
  exp.add_argument("--format", choices=("hf", "dinov2"), default="hf")
  args = parser.parse_args(argv)

  if args.command == "import":
    module, variables = convert.load_pretrained(args.src)
    kt_format.save(args.out, module, variables, extra=kt_format.import_extras(args.src))
    print(f"Imported {args.src} as {type(module).__name__} into {args.out}")
    return 0
  from kt_jax.convert import vit
  module, variables = kt_format.load(args.src)
  if not isinstance(module, vit.VisionTransformer):
    print(f"Export supports ViTs only; {args.src} holds a {type(module).__name__}.",
          file=sys.stderr)
    return 2
  if args.format == "hf":
    vit.export_hf(module, variables["params"], args.out)
  else:
    vit.export_dinov2(module, variables["params"], args.out)
  print(f"Exported {args.src} to {args.out} ({args.format} layout)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
