"""DIGG ("One to Transfer All", 3.2 and 4.2) as pipeline stages, with Table 5's baselines;
configs/digg_tiny.py is one pipeline of them, and an OTA config combines them with IRF.

Stages (each in `<workdir>/<name>/`; every finetune appends its row to `<workdir>/report.*`):
  vqgan, latent_transformer  trained on upstream images only (the shipped natural crops), as
                             the paper does (configs/latent_transformer_tiny.py's settings)
  digg, digg_small           digg_generate: each few-shot train image, bottom half masked on
                             the code grid and completed N times (N_small samples are the
                             first N_small of the N: same seed, same per-sample keys)
  kd_digg, kd_digg_small     distill_feature: the student (from scratch, as in the paper)
                             regresses the teacher's last backbone feature (pooled) by L2 on
                             the DIGG images
  kd_raw                     the same on the few downstream train images only (Table 5 (b))
  kd_upstream                the same on upstream images (the shipped natural crops; (d))
  *_ft                       finetune each distilled student on the few labels
  imagenet                   the student from its ImageNet weights, finetuned (Table 5 (a))
Every distillation has the same teacher, student, steps, batch and augmentation; every
finetune the same split, steps and recipe (task_transfer_recipe.finetune).
"""
import ml_collections

from kt_jax import config_defaults
from kt_jax import task_transfer_recipe as ttr

TASK = "mnist"
TEACHER = ttr.VFM           # the shipped EfficientNet-Lite2 (ImageNet), standing in for BiT
STUDENT = ttr.STUDENT       # MobileNetV2 (its ImageNet weights ship for the baseline)
TINY_STUDENT = {"stage_sizes": (1, 1), "width": 8}
# The tiny pipeline's generative models: 16 px -> a 4x4 grid of 32 codes.
TINY_VQGAN = {"base_channels": 8, "channel_multiplier": (1, 1, 2), "num_res_blocks": 1,
              "latent_channels": 8, "codebook_size": 32, "codebook_dim": 4, "num_groups": 4}
TINY_TRANSFORMER = {"vocab_size": 32, "seq_len": 16, "width": 32, "depth": 1, "num_heads": 2}


def sizes(tiny: bool) -> dict:
  """task_transfer_recipe's budgets plus DIGG's: samples per image of the two DIGG sets and
  the upstream set's size (as many images as the larger DIGG set)."""
  s = dict(ttr._sizes(tiny))
  if tiny:
    s.update(gen_size=16, digg_small=1, digg=2, digg_batch=8, upstream=20, vq_steps=2,
             lt_steps=2, pool=24)
  else:
    s.update(gen_size=32, digg_small=4, digg=16, digg_batch=64, upstream=80 * 16)
  return s


def tiny_upstream(s: dict) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(vqgan, latent_transformer) stage configs that train in seconds (for tests)."""
  vq = config_defaults.vqgan_config()
  vq.update(image_size=s["gen_size"], batch_size=4, total_steps=s["vq_steps"],
            log_every_steps=1, checkpoint_every_steps=s["vq_steps"], async_checkpoints=False)
  vq.vqgan.overrides = dict(TINY_VQGAN)
  vq.discriminator.update(ndf=8, n_layers=1)
  vq.loss.update(disc_start=1, perceptual_network="")
  vq.data.update(pool_size=s["pool"], pool_crop_size=s["gen_size"], holdout=4)
  lt = config_defaults.latent_transformer_config()
  lt.update(image_size=s["gen_size"], batch_size=4, total_steps=s["lt_steps"],
            log_every_steps=1, checkpoint_every_steps=s["lt_steps"], async_checkpoints=False,
            vqgan_path="{stage:vqgan}")
  lt.transformer.overrides = dict(TINY_TRANSFORMER)
  lt.samples.rows = 2
  lt.optimizer.warmup_steps = 1
  lt.data.update(pool_size=s["pool"], pool_crop_size=s["gen_size"], holdout=4)
  return vq, lt


def generate(s: dict, samples: int, vqgan: str = "{stage:vqgan}",
             transformer: str = "{stage:latent_transformer}",
             mask: str = "bottom") -> ml_collections.ConfigDict:
  """digg_generate on the few-shot train split `finetune` draws (same task, labels, seed)."""
  c = config_defaults.digg_generate_config()
  c.vqgan_path, c.transformer_path = vqgan, transformer
  c.image_size = s["gen_size"]
  c.samples_per_image, c.batch_size = samples, s["digg_batch"]
  c.mask.kind = mask
  c.data.task = TASK
  c.data.labels_per_class, c.data.val_per_class = s["labels"], s["val"]
  return c


def _image_folder(c, path: str) -> None:
  """The transfer set: an image folder (a DIGG stage's images/ or originals/)."""
  defaults = config_defaults.training_config().data
  for key in ("pool_size", "pool_crop_size", "pool_mnist", "pool_digit_seg"):
    c.data[key] = defaults[key]
  c.data.source, c.data.path = "image_folder", path


def distill(s: dict, transfer: str, tiny: bool, teacher: str = "") -> ml_collections.ConfigDict:
  """distill_feature with L2 between the teacher's and the student's last backbone feature
  (the pooled one; through the stage's LayerNorm+Linear head, the widths differ). `transfer`:
  an image folder (e.g. "{stage:digg}/images") or "upstream" (the shipped natural crops).
  `teacher`: a model path ("" : the ImageNet VFM; an IRF or finetune stage's model/ for
  IRF-DIGG)."""
  c = ttr.distill_feature(TASK, s, "generic", tiny)
  if teacher:
    c.teacher.path = teacher
  c.distill.loss, c.distill.lambda_cls, c.distill.lambda_patch = "l2", 1.0, 0.0
  if transfer == "upstream":
    c.data.pool_size = s["upstream"]
  else:
    _image_folder(c, transfer)
  c.distill.fit_images = min(c.distill.fit_images, 64)
  return c


def student_name(tiny: bool) -> str:
  return "resnet18 (tiny)" if tiny else STUDENT


def finetune(s: dict, distilled: str, method: str, transfer: str, teacher: str,
             tiny: bool) -> ml_collections.ConfigDict:
  """The distilled student (stage `distilled`) finetuned on the few labels; a report row."""
  return ttr.finetune(TASK, s, method, path=f"{{stage:{distilled}}}/model", size=s["student"],
                      teacher=teacher, transfer=transfer, student=student_name(tiny))


def imagenet_student(s: dict, tiny: bool) -> ml_collections.ConfigDict:
  """Table 5 (a): the student from its ImageNet weights (tiny: a random init), finetuned."""
  if tiny:
    return ttr.finetune(TASK, s, "ImageNet-pretrained student (tiny: random init)",
                        name="resnet18", overrides=TINY_STUDENT, size=s["student"],
                        student=student_name(tiny))
  return ttr.finetune(TASK, s, "ImageNet-pretrained student", path=STUDENT, size=s["student"],
                      student=STUDENT + " (ImageNet weights)")


def kd_transfer_sets(s: dict, digg_sets=("digg_small", "digg"),
                     baselines: bool = True) -> list[tuple[str, str, str]]:
  """(KD stage name, transfer set, report label) of each distillation: DIGG at the sizes
  `digg_sets` and, with `baselines`, the few raw images and the upstream crops."""
  n_images = 10 * (s["labels"] - s["val"])
  rows = [("kd_" + gen, f"{{stage:{gen}}}/images", f"DIGG, {n_images} images x {s[gen]}")
          for gen in digg_sets]
  if baselines:
    rows += [("kd_raw", "{stage:digg}/originals", f"the {n_images} few-shot images only"),
             ("kd_upstream", "upstream", f"upstream: {s['upstream']} shipped natural crops")]
  return rows


def add_digg(stages: ml_collections.ConfigDict, order: list, s: dict, tiny: bool, *,
             teacher: str = "", teacher_label: str = "", prefix: str = "",
             baselines: bool = True, digg_sets: tuple = ("digg_small", "digg")) -> None:
  """Appends DIGG at two sizes (generation, distillation, finetune) and, with `baselines`,
  KD on the few raw images, KD on upstream images and the ImageNet student. Stage names get
  `prefix` (e.g. "irf_" for IRF-DIGG with `teacher="{stage:calibrate}/model"`); the
  generation stages are shared when already in `order`; `digg_sets` picks the DIGG sizes
  distilled on."""
  teacher_label = teacher_label or ("vit_tiny (random)" if tiny else TEACHER + " (ImageNet)")

  def add(name, config):
    stages[name] = config
    order.append(name)

  for gen, n in (("digg_small", s["digg_small"]), ("digg", s["digg"])):
    if gen in digg_sets and gen not in order:
      add(gen, generate(s, n))
  for name, transfer, label in kd_transfer_sets(s, digg_sets, baselines):
    add(prefix + name, distill(s, transfer, tiny, teacher))
    add(prefix + name + "_ft", finetune(s, prefix + name, "feature KD (L2) + finetune", label,
                                        teacher_label, tiny))
  if baselines and "imagenet" not in order:
    add("imagenet", imagenet_student(s, tiny))


def chain(upstream: tuple, tiny: bool = False) -> ml_collections.ConfigDict:
  """The DIGG experiment: `upstream` = (vqgan config, latent_transformer config) trained
  first, then `add_digg`."""
  s = sizes(tiny)
  stages, order = ml_collections.ConfigDict(), []
  vq, lt = upstream
  stages.vqgan, stages.latent_transformer = vq, lt
  order += ["vqgan", "latent_transformer"]
  add_digg(stages, order, s, tiny)
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = stages
  c.order = tuple(order)
  return c
