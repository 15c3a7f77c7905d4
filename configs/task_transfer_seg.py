"""Task-oriented knowledge transfer on digit segmentation, with every baseline, in one pipeline.

  python -m kt_jax.main --config=configs/task_transfer_seg.py --workdir=workdirs/tt_seg
  python -m kt_jax.main --config=configs/task_transfer_seg.py:tiny --workdir=/tmp/tt  # seconds

The task (`kt_jax/data/digit_segmentation.py`): shipped MNIST digits pasted onto shipped
photo crops, every pixel labelled with its digit or background (mIoU over 11 classes). The
VFM (shipped EfficientNet-Lite2 with a light per-pixel head) is finetuned on 10 labelled
images per class; a MobileNetV2 student at a lower resolution is then pretrained four ways
with the same budget (per-pixel task distillation and feature distillation, each on unlabelled
in-domain segmentation images and on the generic shipped natural-image pool) and
finetuned like the two baselines without pretraining on the task (random init; ImageNet
weights). Every finetune appends a row to `<workdir>/report.md` (and report.json,
report_compute.png). Teacher and students run at output stride 8 (dilated last stages): at
stride 32 their maps are 2x2 and 1x1, and no head on them beats background-only mIoU (8.6%;
`benchmarks/digit_seg_grid_oracle.py`). Not measured as a chain: its VFM stage still paints
only background after 150 steps (README, "Task-oriented transfer"). Any VFM:
`--config.stages.vfm.backbone.path=<checkpoint>` (and `--config.stages.fd_indomain.teacher.path=...`
for the task-agnostic rows).
"""
from kt_jax import task_transfer_recipe


def get_config(arg: str = ""):
  """`arg`: "" | "tiny" | "distill_steps=N" (every distillation's steps) | the other variants
  of configs/task_transfer_mnist.py."""
  return task_transfer_recipe.chain_from_arg("digit_seg", arg)
