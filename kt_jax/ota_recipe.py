"""One-to-Transfer-All's IRF (Image Re-representation Fine-tuning) as pipeline stages, with
its baselines and the paper's learning-rate sweeps; `configs/irf_tiny.py` is built from these
(and the lead's OTA config adds DIGG to the same stages).

IRF (paper section 3, recipe 4.1.1):
  vqgan                 priming: a VQGAN on upstream images (configs/vqgan_tiny.py's settings)
  rerepresent           assembling: the few-shot train images encoded + decoded by it
  deliver_lr<i>         delivering: the VFM frozen, only the head trains (linear_probe), on the
                        re-represented images; one stage per grid lr (SGD, Nesterov 0.9,
                        multi-step decay, weight decay 1e-5, random square crops only)
  deliver               select: the grid point with the best validation top-1
  calibrate_lr<i>_wd<j> calibrating: every parameter trains on the original images, from
                        deliver/model (backbone and head); one stage per (lr, wd)
  calibrate             select: the best on validation -> the row "IRF"
Baselines, the same stages on other inputs, chosen on validation the same way:
  lp_lr<i> -> lp        linear probe of the ImageNet VFM on the original images (stage 3's grid)
  ft_lr<i>_wd<j> -> ft  finetune of the ImageNet VFM on the original images (stage 4's grid)
Every grid point appends its row to `<workdir>/sweep/report.md` (the whole sweep, val and
test); each select stage copies its winner's row into `<workdir>/report.md`. Validation and
test are always the task's original images.
"""
import importlib.util
import os

import ml_collections
import numpy as np

from kt_jax import config_defaults

VFM = "efficientnet_lite2"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_REPORT = "../sweep"   # relative to a grid point's workdir: <pipeline root>/sweep/


def log_grid(high: float, low: float, n: int) -> tuple[float, ...]:
  """`n` log-spaced values from `high` down to `low` (both included; n=1: `high`)."""
  return tuple(float(v) for v in np.geomspace(high, low, n)) if n > 1 else (float(high),)


# The paper's grids (4.1.1): stage 3 lr log-uniform in [1, 1e-3]; stage 4: 4 log-spaced lrs in
# [1e-2, 1e-5] x weight decay {1e-3, 1e-4, 1e-5}.
PAPER_STAGE3_LRS = log_grid(1.0, 1e-3, 4)
PAPER_STAGE4_LRS = log_grid(1e-2, 1e-5, 4)
PAPER_STAGE4_WDS = (1e-3, 1e-4, 1e-5)


def vqgan_tiny_config() -> ml_collections.ConfigDict:
  """configs/vqgan_tiny.py's VQGAN (32 px, shipped natural images), loaded, not copied."""
  path = os.path.join(ROOT, "configs", "vqgan_tiny.py")
  spec = importlib.util.spec_from_file_location("vqgan_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def task_data(data, task: str, labels: int, val: int, seed: int = 0, test_per_class: int = 50):
  """The few-shot split keys, identical in rerepresent and every finetune."""
  data.task, data.labels_per_class, data.val_per_class, data.split_seed = task, labels, val, seed
  data.task_options.mnist.test_per_class = test_per_class
  return data


def rerepresent(task: str, labels: int, val: int, vqgan: str = "{stage:vqgan}/model",
                test_per_class: int = 50) -> ml_collections.ConfigDict:
  c = config_defaults.rerepresent_config()
  c.vqgan_path = vqgan
  task_data(c.data, task, labels, val, test_per_class=test_per_class)
  return c


def sgd_finetune(task: str, labels: int, val: int, *, mode: str, lr: float, weight_decay: float,
                 steps: int, batch: int, image_size: int, path: str = VFM, name: str = "",
                 overrides=None, train_images: str = "", method: str = "", report_dir: str = "..",
                 student: str = "", teacher: str = "", transfer: str = "",
                 test_per_class: int = 50) -> ml_collections.ConfigDict:
  """A finetune with the paper's recipe: SGD, Nesterov momentum 0.9, lr x 0.1 at 30/60/90% of
  the steps, random square crops (scale 0.5-1, aspect 1) as the only augmentation."""
  c = config_defaults.finetune_config()
  c.backbone.path, c.backbone.name = path, name
  c.backbone.overrides = overrides or {}
  c.finetune.mode = mode
  c.image_size = image_size
  c.batch_size, c.total_steps = batch, steps
  c.log_every_steps = max(1, steps // 10)
  c.checkpoint_every_steps, c.keep_checkpoints, c.async_checkpoints = steps, 1, False
  c.optimizer.update(name="sgd", momentum=0.9, nesterov=True, schedule="multistep",
                     decay_boundaries=(0.3, 0.6, 0.9), decay_factor=0.1, lr=lr,
                     weight_decay=weight_decay, warmup_steps=0)
  task_data(c.data, task, labels, val, test_per_class=test_per_class)
  c.data.train_images = train_images
  c.data.augment.update(scale=(0.5, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment="",
                        random_erasing=0.0)
  c.report.dir = report_dir
  c.report.method, c.report.student = method, student
  c.report.teacher, c.report.transfer_set = teacher, transfer
  return c


def select(candidates, method: str) -> ml_collections.ConfigDict:
  c = config_defaults.select_config()
  c.candidates = tuple("{stage:%s}" % n for n in candidates)
  c.key = "val"
  c.candidates_report = SWEEP_REPORT
  c.report.dir, c.report.method = "..", method
  return c


def _tag(value: float) -> str:
  return f"{value:.0e}".replace("-0", "-").replace("+0", "")


def sweep(add, prefix: str, lrs, wds, make, chosen_method: str) -> str:
  """Adds one stage per grid point (`make(lr, wd, name)` -> config, its row to the sweep
  table) and the select stage `prefix` after them; returns `prefix`."""
  names = []
  for i, lr in enumerate(lrs):
    for j, wd in enumerate(wds):
      name = f"{prefix}_lr{i}" if len(wds) == 1 else f"{prefix}_lr{i}_wd{j}"
      c = make(lr, wd)
      c.report.dir = SWEEP_REPORT
      c.report.method = f"{chosen_method} [lr {_tag(lr)}, wd {_tag(wd)}]"
      add(name, c)
      names.append(name)
  add(prefix, select(names, chosen_method))
  return prefix


def irf_stages(add, s: dict, vfm_path: str = VFM, vfm_name: str = "", vfm_overrides=None,
               vfm_label: str = VFM, baselines: bool = True, prefix: str = "",
               image_size: int = 0, rerepresent_stage: bool = True,
               method_prefix: str = "") -> None:
  """Adds the IRF stages (and, with `baselines`, LP and FT) to a pipeline through
  `add(name, config)`; `s` holds the sizes (see configs/irf_tiny.py).

  `prefix` names the stages (`<prefix>deliver`, `<prefix>calibrate`, ...) so that one pipeline
  can hold IRF of several models (DIGG-IRF: IRF of a distilled student); `image_size` (0:
  `s["vfm_size"]`) is the model's input size; `rerepresent_stage=False` reuses the pipeline's
  `rerepresent` stage (the re-represented images do not depend on the model);
  `method_prefix` starts the report's method names (e.g. "DIGG-IRF: ")."""
  task = dict(task=s["task"], labels=s["labels"], val=s["val"],
              test_per_class=s["test_per_class"])
  common = dict(steps=s["steps"], batch=s["batch"], image_size=image_size or s["vfm_size"],
                test_per_class=s["test_per_class"])
  vfm = dict(path=vfm_path, name=vfm_name, overrides=vfm_overrides, student=vfm_label)
  if rerepresent_stage:
    add("rerepresent", rerepresent(s["task"], s["labels"], s["val"],
                                   test_per_class=s["test_per_class"]))
  wd3 = (1e-5,)  # stage 3's weight decay (4.1.1)
  deliver = sweep(add, prefix + "deliver", s["stage3_lrs"], wd3, lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="linear_probe", lr=lr, weight_decay=wd,
      train_images="{stage:rerepresent}", transfer="re-represented train images", **vfm,
      **common),
      f"{method_prefix}IRF stage 3 only (delivering: frozen backbone, head on re-represented "
      "images)")
  sweep(add, prefix + "calibrate", s["stage4_lrs"], s["stage4_wds"], lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="full", lr=lr, weight_decay=wd,
      path=f"{{stage:{deliver}}}/model", student=vfm_label, transfer="original train images",
      **common), f"{method_prefix}IRF (delivering + calibrating)")
  if not baselines:
    return
  sweep(add, prefix + "lp", s["stage3_lrs"], wd3, lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="linear_probe", lr=lr, weight_decay=wd,
      transfer="original train images", **vfm, **common),
      f"{method_prefix}LP (linear probe of the VFM)")
  sweep(add, prefix + "ft", s["stage4_lrs"], s["stage4_wds"], lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="full", lr=lr, weight_decay=wd,
      transfer="original train images", **vfm, **common),
      f"{method_prefix}FT (finetune of the VFM)")


def pipeline(stages: ml_collections.ConfigDict, order: list) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = stages
  c.order = tuple(order)
  return c


def irf(s: dict, vqgan: ml_collections.ConfigDict, **vfm) -> ml_collections.ConfigDict:
  """The whole IRF experiment as one pipeline: vqgan, then `irf_stages`."""
  stages, order = ml_collections.ConfigDict(), []

  def add(name, config):
    stages[name] = config
    order.append(name)
  add("vqgan", vqgan)
  irf_stages(add, s, **vfm)
  return pipeline(stages, order)


def ota(s: dict, upstream: tuple, tiny: bool = False, fd_model: str = "efficientnet_lite0",
        fd_image_size: int = 0, **vfm) -> ml_collections.ConfigDict:
  """The whole One-to-Transfer-All experiment as one pipeline (configs/ota_tiny.py):

    vqgan, latent_transformer         upstream only (the shipped natural crops)
    IRF + LP/FT baselines             `irf_stages` on the VFM (row "IRF" is `calibrate`)
    DIGG + Table 5's baselines        `digg_recipe.add_digg`: KD from the ImageNet VFM on
                                      DIGG, the few raw images, upstream images;
                                      the ImageNet student
    IRF-DIGG                          KD from the IRF teacher on DIGG, then FT (`irf_kd_digg_ft`)
                                      and LP+FT (`irf_kd_digg_lpft`, the paper's Table 11)
    DIGG-IRF                          IRF (deliver + calibrate) of the student KD'd on DIGG
                                      from the ImageNet VFM (`digg_irf_calibrate`)
    domain_gap                        FD of raw upstream, re-represented and DIGG images to
                                      the downstream train images

  `s`: irf sizes (configs/irf_tiny.py's keys) plus digg_recipe.sizes' keys; `upstream`:
  (vqgan config, latent_transformer config); `vfm`: irf_stages' vfm_* arguments (the model
  IRF, LP and FT finetune; the KD teacher is digg_recipe's)."""
  from kt_jax import digg_recipe
  stages, order = ml_collections.ConfigDict(), []

  def add(name, config):
    stages[name] = config
    order.append(name)
  add("vqgan", upstream[0])
  add("latent_transformer", upstream[1])
  irf_stages(add, s, **vfm)
  digg_recipe.add_digg(stages, order, s, tiny, digg_sets=("digg",))
  teacher_label = f"IRF {VFM} (calibrate)" if not tiny else "IRF vit_tiny (calibrate)"
  digg_recipe.add_digg(stages, order, s, tiny, teacher="{stage:calibrate}/model",
                       teacher_label=teacher_label, prefix="irf_", baselines=False,
                       digg_sets=("digg",))
  lpft = digg_recipe.finetune(s, "irf_kd_digg", "feature KD (L2) + LP+FT", stages.irf_kd_digg_ft
                              .report.transfer_set, teacher_label, tiny)
  lpft.finetune.update(mode="lp_ft", probe_steps=max(1, s["ft_steps"] // 2))
  add("irf_kd_digg_lpft", lpft)
  student = digg_recipe.student_name(tiny)
  irf_stages(add, s, vfm_path="{stage:kd_digg}/model", vfm_label=f"{student} (KD on DIGG)",
             baselines=False, prefix="digg_irf_", image_size=s["student"],
             rerepresent_stage=False, method_prefix="DIGG-IRF: ")
  gap = config_defaults.domain_gap_config()
  gap.model, gap.image_size = fd_model, fd_image_size
  gap.reference = "{stage:digg}/originals"
  gap.report.reference_label = "downstream train images"
  gap.sets = ml_collections.ConfigDict({
      "raw upstream": "upstream", "re-represented": "{stage:rerepresent}/images",
      "DIGG": "{stage:digg}/images"})
  gap.data.update(pool_size=s["upstream"], pool_crop_size=s["gen_size"])
  add("domain_gap", gap)
  return pipeline(stages, order)
