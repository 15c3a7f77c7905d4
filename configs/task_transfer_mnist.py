"""Task-oriented knowledge transfer on 10-shot MNIST, with every baseline, in one pipeline.

  python -m kt_jax.main --config=configs/task_transfer_mnist.py --workdir=workdirs/tt_mnist
  python -m kt_jax.main --config=configs/task_transfer_mnist.py:tiny --workdir=/tmp/tt  # seconds

The VFM (shipped EfficientNet-Lite2, ImageNet weights) is finetuned on 10 labelled digits per
class (2 of them per class for validation; test: 50 held-out digits per class); a MobileNetV2
student at a lower resolution (>= 4x fewer FLOPs, in the report) is then pretrained four
ways with the same budget (task distillation and feature distillation, each on the in-domain
transfer set of unlabelled MNIST digits and on the generic shipped natural-image pool) and
finetuned like the two baselines without pretraining on the task (random init; ImageNet
weights). Every finetune appends a row to `<workdir>/report.md` (and report.json,
report_compute.png). Any VFM: `--config.stages.vfm.backbone.path=<checkpoint>` (and
`--config.stages.fd_indomain.teacher.path=...` for the task-agnostic rows).
"""
from kt_jax import task_transfer_recipe


def get_config(arg: str = ""):
  return task_transfer_recipe.chain("mnist", tiny=arg == "tiny")
