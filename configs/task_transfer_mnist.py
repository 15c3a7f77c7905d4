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

With a transfer set curated by configs/retrieve_mnist.py (rerun in the same workdir: finished
stages are skipped, the two new ones run):

  python -m kt_jax.main \
      --config=configs/task_transfer_mnist.py:retrieved=workdirs/retrieve_mnist/balanced/manifest.jsonl \
      --workdir=workdirs/tt_mnist

The transfer-set-size curve (in-domain distillation on 250, 500 and 1,000 images beside the
chain's 2,000; combine with retrieved=... by a comma):

  python -m kt_jax.main --config=configs/task_transfer_mnist.py:sizes=250/500/1000 \
      --workdir=workdirs/tt_mnist
"""
from kt_jax import task_transfer_recipe


def get_config(arg: str = ""):
  """`arg`: "" | "tiny" | comma-separated "retrieved=<manifest.jsonl>" (adds the retrieved
  transfer set), "sizes=250/500/1000" (adds in-domain distillation on fewer images) and
  "distill_steps=N" (every distillation's steps)."""
  return task_transfer_recipe.chain_from_arg("mnist", arg)
