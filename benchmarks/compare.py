"""kt_jax against the PyTorch reference, same step, same shapes, one invocation.

  python benchmarks/compare.py --case proteus_vits_112 [--steps 5 --warmup 2] [--json out.json]

Cases:
  proteus_vits_112  Proteus step: ViT-S/14 student <- ViT-B/14 teacher, 112 px, batch 16, fp32
  task_distill_resnet18_224  task distillation: ResNet-18 student <- ViT-S/14 classifier (10
                    classes), 224 px, batch 16, KL at T=1
  task_distill_vitti_224     the same with a ViT-Ti/16 student
  vitb14_224        teacher inference: DINOv2 ViT-B/14 at 224 px, batch 16
  effnet_lite0_224  teacher inference: EfficientNet-Lite0 (shipped weights) at 224 px, batch 16
  proteus_tiny_config  the step of configs/proteus_tiny.py: 6-block ViT-Ti/32 <- the shipped
                    EfficientNet-Lite0, 160 px (5x5 tokens), batch 32
  proteus_tiny      Proteus step at toy shapes: 2-block ViT-Ti/16 <- ViT-Ti/16, 32 px, batch 4
                    (what the test suite runs)
  task_distill_mnist_embedded  the td_indomain stage of configs/task_transfer_mnist.py:
                    MobileNetV2 (10-class head) <- EfficientNet-Lite2 classifier (10 classes,
                    RANDOM weights: a benchmark has no finetuned VFM), the config's sizes
                    (student 32 px, teacher 64 px), batch 32, KL at T=2, the recipe's
                    mixup/CutMix (off since 2026-12-02), AdamW;
                    reference: transformers' MobileNetV2ForImageClassification <-
                    efficientnet_lite_pytorch's lite2
  task_distill_mnist_toy  the same step at toy shapes: 32 px both, batch 4 (the test suite's)
  vqgan_tiny        the step of configs/vqgan_tiny.py with the GAN on (disc_start 0: both
                    losses active): vqgan_tiny + PatchGAN (ndf 32, 2 layers), L1 + perceptual
                    (EfficientNet-Lite0 features) + codebook/commitment + adaptive hinge GAN
                    loss, then the discriminator, two Adams, 32 px, batch 32; reference:
                    transformers' JanusVQVAE modules + taming's NLayerDiscriminator in torch
  vqgan_toy         the same step at toy shapes: 16 px, batch 4 (the test suite's)
Ours runs first (XLA), then the reference eager and with torch.compile; the ratio is our
images/s over the reference's best. Weights are random except EfficientNet-Lite0's.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(name):
  return _load(name, os.path.join(ROOT, "configs", f"{name}.py")).get_config()


def ours_proteus_vits(image_size, batch):
  c = _config("proteus_vits")
  c.teacher.path = "random:vit_base_patch14_dinov2"
  c.image_size, c.batch_size = image_size, batch
  c.ema_decay = 0.0  # the reference keeps no EMA
  c.eval.tasks = ()
  return c


def ours_proteus_tiny():
  c = ours_proteus_vits(32, 4)
  c.student.name, c.student.overrides = "vit_tiny_patch16", {"depth": 2}
  c.teacher.path = "random:vit_tiny_patch16"
  return c


def ours_task_distill(student, image_size, batch):
  from kt_jax import bench
  c = bench.task_distill_bench_config()
  c.teacher.path, c.teacher.num_classes = "random:vit_small_patch14_dinov2", 10
  c.student.name = student
  c.image_size, c.batch_size = image_size, batch
  return c


def ours_proteus_tiny_config():
  c = _config("proteus_tiny")
  c.eval.tasks = ()
  return c


def ours_task_distill_mnist(toy=False):
  """The embedded task-transfer config's td_indomain stage, teacher replaced by a random
  EfficientNet-Lite2 classifier with 10 classes (no finetuned VFM exists in a benchmark; the
  timing does not depend on the weights)."""
  from kt_jax import task_transfer_recipe
  c = task_transfer_recipe.distill_task("mnist", task_transfer_recipe._sizes(False),
                                        "indomain", False)
  c.teacher.path, c.teacher.num_classes = "random:efficientnet_lite2", 10
  if toy:
    c.image_size, c.teacher.image_size, c.batch_size = 32, 32, 4
  return c


def ref_task_distill_mnist(c):
  return dict(step="task_transfer", student=c.student.name, teacher="efficientnet-lite2",
              image_size=c.image_size, teacher_image_size=c.teacher.image_size or c.image_size,
              batch=c.batch_size, num_classes=c.teacher.num_classes,
              temperature=c.distill.temperature, mixup_alpha=c.distill.mixup_alpha,
              cutmix_alpha=c.distill.cutmix_alpha)


def ours_vqgan_tiny(toy=False):
  """configs/vqgan_tiny.py with disc_start 0, so that the GAN losses are on from the first
  step, as past disc_start in a run (the compiled step is the same either way: disc_factor is
  a traced 0 or 1)."""
  c = _config("vqgan_tiny")
  c.loss.disc_start = 0
  if toy:
    c.image_size, c.batch_size = 16, 4
  return c


def ref_vqgan(c):
  from kt_jax import models
  m = models.create(c.vqgan.name, **c.vqgan.overrides.to_dict())
  if c.loss.perceptual_network not in ("", "efficientnet_lite0") or c.loss.perceptual_layers \
      or c.loss.perceptual_image_size:
    raise ValueError("the torch reference has EfficientNet-Lite0's default layers only")
  if c.discriminator.norm != "batch":
    raise ValueError("the torch reference's PatchGAN has BatchNorm only")
  vqgan = dict(base_channels=m.base_channels, channel_multiplier=tuple(m.channel_multiplier),
               num_res_blocks=m.num_res_blocks, latent_channels=m.latent_channels,
               codebook_size=m.codebook_size, codebook_dim=m.codebook_dim)
  return dict(step="vqgan", image_size=c.image_size, batch=c.batch_size,
              ndf=c.discriminator.ndf, n_layers=c.discriminator.n_layers,
              perceptual=bool(c.loss.perceptual_network and c.loss.perceptual_weight),
              lr=c.optimizer.lr, vqgan=vqgan)


def ours_inference(teacher, image_size, batch):
  c = _config("demo")
  c.teacher.path, c.image_size, c.eval.batch_size = teacher, image_size, batch
  return c


CASES = {
    "proteus_vits_112": (lambda: ours_proteus_vits(112, 16),
                         dict(step="proteus", student="vit_small", teacher="vit_base", patch=14,
                              image_size=112, batch=16, attention="sdpa")),
    "proteus_tiny": (ours_proteus_tiny,
                     dict(step="proteus", student="vit_tiny", teacher="vit_tiny", patch=16,
                          image_size=32, batch=4, depth=2, attention="sdpa")),
    "task_distill_resnet18_224": (
        lambda: ours_task_distill("resnet18", 224, 16),
        dict(step="task_distill", student="resnet18", teacher="vit_small", patch=14,
             image_size=224, batch=16, attention="sdpa")),
    "task_distill_vitti_224": (
        lambda: ours_task_distill("vit_tiny_patch16", 224, 16),
        dict(step="task_distill", student="vit_tiny", teacher="vit_small", patch=14,
             image_size=224, batch=16, attention="sdpa")),
    "proteus_tiny_config": (ours_proteus_tiny_config,
                            dict(step="proteus", student="vit_tiny", teacher="efficientnet_lite0",
                                 patch=32, image_size=160, batch=32, depth=6, attention="sdpa")),
    "vitb14_224": (lambda: ours_inference("random:vit_base_patch14_dinov2", 224, 16),
                   dict(step="inference", model="dinov2_vitb14", image_size=224, batch=16,
                        attention="sdpa")),
    "effnet_lite0_224": (lambda: ours_inference("efficientnet_lite0", 224, 16),
                         dict(step="inference", model="efficientnet_lite0", image_size=224,
                              batch=16)),
    # The reference's arguments are read from our config (a function of it).
    "task_distill_mnist_embedded": (ours_task_distill_mnist, ref_task_distill_mnist),
    "task_distill_mnist_toy": (lambda: ours_task_distill_mnist(toy=True),
                               ref_task_distill_mnist),
    "vqgan_tiny": (ours_vqgan_tiny, ref_vqgan),
    "vqgan_toy": (lambda: ours_vqgan_tiny(toy=True), ref_vqgan),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", choices=sorted(CASES), required=True)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)

  from kt_jax import bench
  make_config, ref_kwargs = CASES[args.case]
  config = make_config()
  if callable(ref_kwargs):
    ref_kwargs = ref_kwargs(config)
  ours = bench.run(config, f"/tmp/kt_jax_compare_{args.case}", args.steps, args.warmup)
  torch_reference = _load("torch_reference", os.path.join(ROOT, "benchmarks",
                                                          "torch_reference.py"))
  refs = {"eager": torch_reference.run(steps=args.steps, warmup=args.warmup,
                                       compile_mode="none", **ref_kwargs)}
  if not args.no_compile:
    refs["compiled"] = torch_reference.run(steps=args.steps, warmup=args.warmup,
                                           compile_mode="default", **ref_kwargs)
  best = max((r["images_per_s"] or 0.0) for r in refs.values())
  ratio = ours["images_per_s"] / best if best else None
  row = {"case": args.case, "date": time.strftime("%Y-%m-%d"), "ours": ours,
         "reference": {k: {kk: v for kk, v in r.items() if kk != "step_s_all"}
                       for k, r in refs.items()},
         "ratio_vs_best_reference": ratio}
  fmt = lambda r: f"{r['images_per_s']:.2f}" if r.get("images_per_s") else "n/a"
  util = ours["utilisation"]
  print(f"| {args.case} | {ours['images_per_s']:.2f} | {fmt(refs['eager'])} | "
        f"{fmt(refs['compiled']) if 'compiled' in refs else '-'} | "
        f"{ratio:.2f}x | {100 * util:.0f}% | "
        f"{ours.get('compiled_bytes', 0) / 2**20:.0f} MiB |" if util else "")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(row, f, indent=2)
  return row


if __name__ == "__main__":
  main()
