"""10-shot MNIST on the shipped EfficientNet-Lite0: a linear probe, then every parameter (lp_ft).

  python -m kt_jax.main --config=configs/finetune_mnist.py --workdir=workdirs/finetune_mnist

8 labelled digits per class train, 2 per class validate, the `mnist` eval task's 50 held-out
digits per class are the test split. Any backbone fits: `--config.backbone.path=<checkpoint,
model directory or shipped model>` or `--config.backbone.path="" --config.backbone.name=
resnet18` (from scratch); `--config.data.task=folder:/data/mytask` for your own labels.
"""
from kt_jax import config_defaults


def get_config():
  c = config_defaults.finetune_config()
  c.backbone.path = "efficientnet_lite0"
  c.image_size = 112
  c.batch_size = 32
  c.total_steps = 200
  c.log_every_steps = 20
  c.eval_every_steps = 100
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.finetune.mode = "lp_ft"
  c.finetune.probe_steps = 100
  c.finetune.probe_lr = 1e-2
  c.finetune.label_smoothing = 0.1
  c.data.task = "mnist"
  c.data.labels_per_class = 10
  c.data.val_per_class = 2
  c.data.augment.scale = (0.6, 1.0)
  c.data.augment.hflip = 0.0       # digits are not mirror-symmetric
  c.data.crop_pct = 1.0            # whole digits at evaluation
  return c
