"""Command line: `python -m kt_jax.convert import|export|extract ...`.

  import  --src <file|dir|shipped name> --out <dir>   PyTorch -> kt_jax model directory
  export  --src <kt_jax dir> --out <dir|file> --format hf|dinov2|efficientnet_lite|onnx
  extract --workdir <training workdir> [--step N] [--ema] [--out <dir>]
          a checkpoint's student -> kt_jax model directory (what `model/` holds)
"""
import argparse
import sys

from kt_jax import convert, errors
from kt_jax.convert import kt_format


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m kt_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--debug", action="store_true",
                      help="show the traceback of a user error (also KT_JAX_DEBUG=1)")
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", parents=[common],
                       help="PyTorch checkpoint -> kt_jax model directory")
  imp.add_argument("--src", required=True, metavar="CHECKPOINT",
                   help="a .pth/.pt/.bin/.safetensors state dict (official DINOv2, timm, "
                        "EfficientNet-Lite, MobileNetV2, ResNet), a transformers model "
                        "directory, or a shipped model's name (efficientnet_lite0, ...)")
  imp.add_argument("--out", required=True, metavar="DIR",
                   help="the kt_jax model directory to write; configs read it as "
                        "teacher.path")
  exp = sub.add_parser("export", parents=[common],
                       help="kt_jax model directory -> PyTorch layouts")
  exp.add_argument("--src", required=True, metavar="DIR",
                   help="a kt_jax model directory (written by `import` or a stage)")
  exp.add_argument("--out", required=True, metavar="PATH",
                   help="a directory for --format hf, a .pth file for dinov2 and "
                        "efficientnet_lite, a .onnx file for onnx")
  exp.add_argument("--format", choices=("hf", "dinov2", "efficientnet_lite", "onnx"),
                   default="hf",
                   help="hf: config.json + model.safetensors for transformers' AutoModel / "
                        "AutoModelForImageClassification (ViT, ResNet, MobileNetV2, "
                        "MobileViT-V2; a VQGAN: transformers' JanusVQVAE); dinov2: the official DINOv2 state dict layout; "
                        "efficientnet_lite: efficientnet_lite_pytorch's state dict; onnx: the "
                        "PyTorch model through torch.onnx.export")
  exp.add_argument("--image-size", type=int, default=0,
                   help="onnx: the traced input size (default: the model's input spec)")
  ext = sub.add_parser("extract", parents=[common], help="training checkpoint -> kt_jax model directory")
  ext.add_argument("--workdir", required=True,
                   help="workdir of a training run (holds checkpoints/<step>/)")
  ext.add_argument("--step", type=int, default=None,
                   help="checkpoint step to extract (default: the latest)")
  ext.add_argument("--ema", action="store_true",
                   help="extract the EMA of the student's weights (runs with ema_decay > 0)")
  ext.add_argument("--out", default=None,
                   help="kt_jax model directory to write (default: "
                   "<workdir>/model_step<N>, or model_ema_step<N> with --ema)")
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  return errors.exit_on_user_error(_run, args, prog=parser.prog, debug=args.debug)


def _run(args) -> int:
  if args.command == "import":
    convert.check_source(args.src)
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
  return _export(args)


def _export(args) -> int:
  from kt_jax.convert import export, vit, vqgan
  if not kt_format.is_kt_dir(args.src):
    raise errors.UserError(f"{args.src} is not a kt_jax model directory (model.json + "
                           "variables/); `import` or a training stage writes one.")
  module, variables = kt_format.load(args.src)
  if args.format == "hf" and isinstance(module, vqgan.vqgan_model.VQGAN):
    vqgan.export_hf(module, variables, args.out)
    written = "transformers JanusVQVAE layout"
  elif args.format == "hf":
    written = export.export_hf(module, variables, args.out)
  elif args.format == "dinov2":
    if not isinstance(module, vit.VisionTransformer):
      raise errors.UserError(f"--format dinov2 needs a bare ViT; {args.src} holds a "
                             f"{type(module).__name__}.")
    vit.export_dinov2(module, variables["params"], args.out)
    written = "DINOv2 state dict"
  elif args.format == "efficientnet_lite":
    written = export.export_efficientnet_lite(module, variables, args.out)
  else:
    size = args.image_size or convert.input_spec(args.src).image_size
    export.export_onnx(module, variables, args.out, size)
    written = f"ONNX at {size} px"
  print(f"Exported {args.src} to {args.out} ({args.format}: {written})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
