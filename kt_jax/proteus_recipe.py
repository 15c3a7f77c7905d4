"""The official Proteus ImageNet recipe (BeSpontaneous/Proteus-pytorch, pretrain/main.py and
run_pretrain.sh), shared by configs/proteus_vit{ti,s,b,l}.py."""
from kt_jax import config_defaults


def recipe(student: str):
  c = config_defaults.proteus_config()
  c.student.name = student
  # The official student: DINOv2 ViT, img_size 224, LayerScale 1.0, no registers, offset 0.1.
  c.student.overrides = {"pos_interp_offset": 0.1}
  c.teacher.path = ""  # required: --config.teacher.path=<converted checkpoint>
  c.image_size = 224
  c.batch_size = 1024
  c.epochs = 300
  c.optimizer.lr = 5e-4
  c.optimizer.lr_base_batch = 512  # lr = 5e-4 * batch / 512
  c.optimizer.warmup_epochs = 5
  c.optimizer.warmup_init = 1e-6
  c.optimizer.min_lr = 1e-5
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 0.0
  # timm's create_optimizer on the official MetaArch (no `no_weight_decay()`) decays every
  # parameter of ndim > 1, tokens and position embeddings included; we follow the code.
  c.optimizer.no_decay_names = ()
  c.ema_decay = 0.99996
  c.data.source = "image_folder"  # or "arrayrecord"; --config.data.path=...
  c.data.repeated_augmentation = 3  # RASampler, as the official multi-GPU runs use
  c.data.workers = 16
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 10000
  c.eval.tasks = ("mnist", "photos")
  return c


def shipped_recipe():
  """Proteus at CPU scale on what ships in packages, shared by configs/proteus_{tiny,small}.py.

  Teacher: EfficientNet-Lite0 with Google's ImageNet weights; its pooled feature plays the
  class token and its 5x5 final feature map the patch tokens. Student: a 6-block ViT-Ti/32,
  whose 5x5 token grid at 160 px matches the teacher's. Data: crops of the shipped photos.
  """
  c = config_defaults.proteus_config()
  c.teacher.path = "efficientnet_lite0"
  c.student.name = "vit_tiny_patch32"
  c.student.overrides = {"depth": 6}
  c.image_size = 160
  c.batch_size = 32
  c.optimizer.lr_base_batch = 0
  c.data.source = "shipped_pool"
  c.data.pool_crop_size = 160
  c.eval.tasks = ("mnist", "photos")
  return c
