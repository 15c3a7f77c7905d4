"""Command line: `python -m kt_jax.convert import|export|extract ...`.

  import  --src <file|dir|shipped name> --out <dir>   PyTorch -> kt_jax model directory
  export  --src <kt_jax dir> --out <dir|file> --format hf|dinov2
  extract --workdir <training workdir> [--step N] [--ema] [--out <dir>]
          a checkpoint's student -> kt_jax model directory (what `model/` holds)
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
  imp.add_argument("--src", required=True,
                   help="a .pth/.pt/.bin/.safetensors file, a transformers model directory, or "
                   "a shipped model name (efficientnet_lite0, mobilenet_v2, ...)")
  imp.add_argument("--out", required=True, help="kt_jax model directory to write")
  exp = sub.add_parser("export", help="kt_jax model directory -> PyTorch layouts")
  exp.add_argument("--src", required=True,
                   help="kt_jax model directory (from `import`, `extract` or a run's model/)")
  exp.add_argument("--out", required=True,
                   help="directory (--format hf) or .pth file (--format dinov2) to write")
  exp.add_argument("--format", choices=("hf", "dinov2"), default="hf",
                   help="hf: config.json + model.safetensors for transformers.AutoModel; "
                   "dinov2: a state dict in the official DINOv2 layout (default: hf)")
  ext = sub.add_parser("extract", help="training checkpoint -> kt_jax model directory")
  ext.add_argument("--workdir", required=True,
                   help="workdir of a training run (holds checkpoints/<step>/)")
  ext.add_argument("--step", type=int, default=None,
                   help="checkpoint step to extract (default: the latest)")
  ext.add_argument("--ema", action="store_true",
                   help="extract the EMA of the student's weights (runs with ema_decay > 0)")
  ext.add_argument("--out", default=None,
                   help="kt_jax model directory to write (default: "
                   "<workdir>/model_step<N>, or model_ema_step<N> with --ema)")
  args = parser.parse_args(argv)

  if args.command == "import":
    module, variables = convert.load_pretrained(args.src)
    kt_format.save(args.out, module, variables, extra=kt_format.import_extras(args.src))
    print(f"Imported {args.src} as {type(module).__name__} into {args.out}")
    return 0
  if args.command == "extract":
    from kt_jax.train import model_out
    try:
      out = model_out.extract(args.workdir, args.step, args.ema, args.out)
    except model_out.ExtractError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"Extracted the student of {args.workdir} into {out}")
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
