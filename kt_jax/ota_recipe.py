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
               vfm_label: str = VFM, baselines: bool = True) -> None:
  """Adds the IRF stages (and, with `baselines`, LP and FT) to a pipeline through
  `add(name, config)`; `s` holds the sizes (see configs/irf_tiny.py)."""
  task = dict(task=s["task"], labels=s["labels"], val=s["val"],
              test_per_class=s["test_per_class"])
  common = dict(steps=s["steps"], batch=s["batch"], image_size=s["vfm_size"],
                test_per_class=s["test_per_class"])
  vfm = dict(path=vfm_path, name=vfm_name, overrides=vfm_overrides, student=vfm_label)
  add("rerepresent", rerepresent(s["task"], s["labels"], s["val"],
                                 test_per_class=s["test_per_class"]))
  wd3 = (1e-5,)  # stage 3's weight decay (4.1.1)
  sweep(add, "deliver", s["stage3_lrs"], wd3, lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="linear_probe", lr=lr, weight_decay=wd,
      train_images="{stage:rerepresent}", transfer="re-represented train images", **vfm,
      **common),
      "IRF stage 3 only (delivering: frozen VFM, head on re-represented images)")
  sweep(add, "calibrate", s["stage4_lrs"], s["stage4_wds"], lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="full", lr=lr, weight_decay=wd,
      path="{stage:deliver}/model", student=vfm_label, transfer="original train images",
      **common), "IRF (delivering + calibrating)")
  if not baselines:
    return
  sweep(add, "lp", s["stage3_lrs"], wd3, lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="linear_probe", lr=lr, weight_decay=wd,
      transfer="original train images", **vfm, **common), "LP (linear probe of the VFM)")
  sweep(add, "ft", s["stage4_lrs"], s["stage4_wds"], lambda lr, wd: sgd_finetune(
      task["task"], task["labels"], task["val"], mode="full", lr=lr, weight_decay=wd,
      transfer="original train images", **vfm, **common), "FT (finetune of the VFM)")


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
