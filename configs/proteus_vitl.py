"""Proteus: distil DINOv2 ViT-g/14 into a randomly initialised vit_large_patch14 on ImageNet.

  python -m kt_jax.convert import --src dinov2_vitg14_pretrain.pth --out teachers/dinov2_vitg14
  python -m kt_jax.main --config=configs/proteus_vitl.py --workdir=workdirs/proteus_vitl \
      --config.teacher.path=teachers/dinov2_vitg14 --config.data.path=/data/imagenet/train

Parameters, optimizer state, EMA and the teacher are sharded over every device by default
(mesh data 1 x fsdp N on N devices); nothing to add on the command line. For a hybrid layout
on several hosts, e.g. `--config.mesh.data=4 --config.mesh.fsdp=-1`.

The official recipe: 300 epochs, global batch 1024, AdamW lr 5e-4 x batch/512, 5 warmup
epochs from 1e-6, cosine to 1e-5, weight decay 0.05, no clipping, EMA 0.99996, 224 px, DeiT
augmentations without mixup, repeated augmentation x3, mask probability 0.5 ratio 0.5.
data.source may be "arrayrecord" (a TFDS ArrayRecord directory) instead of an image folder.
"""
from kt_jax import proteus_recipe


def get_config():
  c = proteus_recipe.recipe("vit_large_patch14")
  # ViT-g/14 has 1.1B parameters: shard teacher, student and optimizer state over an fsdp
  # axis spanning all devices (the batch is split over data x fsdp). Each leaf of >= 16k
  # elements is split along its largest dimension divisible by the axis size; small leaves
  # (norms, biases) are replicated. On one device this is plain single-device training.
  c.mesh = {"data": 1, "fsdp": -1}
  c.sharding_rules = ((".*", "fsdp"),)
  return c
