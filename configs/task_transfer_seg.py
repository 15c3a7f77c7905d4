"""Task-oriented knowledge transfer on digit segmentation, with every baseline, in one pipeline.

  python -m kt_jax.main --config=configs/task_transfer_seg.py --workdir=workdirs/tt_seg
  python -m kt_jax.main --config=configs/task_transfer_seg.py:tiny --workdir=/tmp/tt  # seconds

The task (`kt_jax/data/digit_segmentation.py`): shipped MNIST digits pasted onto shipped
photo crops, every pixel labelled with its digit or background (mIoU over 11 classes, scored
on 64 px masks for every model). The VFM (shipped EfficientNet-Lite2 at 64 px) is finetuned on
50 labelled images per class (5 of them for validation); a MobileNetV2 student at 32 px is
then pretrained four ways with the same budget (per-pixel task distillation and feature
distillation, each on unlabelled in-domain segmentation images and on the generic shipped
natural-image pool) and finetuned like the two baselines without pretraining on the task
(random init; ImageNet weights). Every model's head is DeepLabv3+'s decoder on its final map
and its stride-4 map (`head.skip_stride=4`): at stride 32 alone the maps are 2x2 and 1x1, and
no head on them beats background-only mIoU (8.6%; `benchmarks/digit_seg_grid_oracle.py`).
Every finetune appends a row to `<workdir>/report.md` (and report.json, report_compute.png);
the measured table is in the README ("Task-oriented transfer"). Any VFM:
`--config.stages.vfm.backbone.path=<checkpoint>` (and `--config.stages.fd_indomain.teacher.path=...`
for the task-agnostic rows).
"""
from kt_jax import task_transfer_recipe


def get_config(arg: str = ""):
  """`arg`: "" | "tiny" | "distill_steps=N" (every distillation's steps) | the other variants
  of configs/task_transfer_mnist.py."""
  return task_transfer_recipe.chain_from_arg("digit_seg", arg)
