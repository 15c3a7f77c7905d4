"""Stages of the task-transfer chain on 1 and 8 simulated devices: the segmentation finetune
(skip decoder, class weights, masks scored at another size than the input) gives the same
losses and mIoU; task distillation from it and feature distillation give the same losses."""
import json
import os
import subprocess
import sys

import numpy as np

from test_trainer import ROOT, losses

_RUN = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=%d"
sys.path.insert(0, %r)
import jax
from test_finetune import tiny_config  # registers the synthetic_seg task
from kt_jax import stages
assert jax.device_count() == %d
config = tiny_config(**{"data.task": "synthetic_seg", "data.labels_per_class": 4,
                        "backbone.name": "resnet18", "total_steps": 3, "image_size": 24,
                        "head.hidden": 8, "head.skip_stride": 4, "eval.mask_size": 32,
                        "finetune.class_weights": "median_frequency", "report.dir": "."})
config.backbone.overrides = {"stage_sizes": (1, 1), "width": 8}
summary = stages.run(config, %r)
print(json.dumps({"val": summary["val"], "test": summary["test"]}))
"""


def test_segmentation_finetune_on_one_and_eight_devices(tmp_path):
  scores = {}
  for n in (1, 8):
    out = subprocess.run(
        [sys.executable, "-c", _RUN % (n, os.path.dirname(__file__), n, str(tmp_path / f"d{n}"))],
        cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    scores[n] = json.loads(out.stdout.strip().splitlines()[-1])
  one, eight = losses(tmp_path / "d1"), losses(tmp_path / "d8")
  assert [s for s, _ in one] == [s for s, _ in eight] == [1, 2, 3]
  np.testing.assert_allclose([l for _, l in one], [l for _, l in eight], rtol=1e-5)
  np.testing.assert_allclose([scores[1]["val"], scores[1]["test"]],
                             [scores[8]["val"], scores[8]["test"]], rtol=1e-6)


_DISTILL = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=%d"
import jax
from kt_jax import stages, task_transfer_recipe
assert jax.device_count() == %d
chain = task_transfer_recipe.chain("digit_seg", tiny=True)
config = chain.stages[%r]
config.total_steps = config.checkpoint_every_steps = 3
if config.stage == "distill_task":
  config.teacher.path = %r
stages.run(config, %r)
"""


def test_distillations_on_one_and_eight_devices(tmp_path):
  """The chain's tiny task distillation (from a segmentation model with the skip decoder)
  and feature distillation: the same losses on 1 and 8 simulated devices."""
  teacher = tmp_path / "teacher"
  out = subprocess.run(
      [sys.executable, "-c", _RUN % (1, os.path.dirname(__file__), 1, str(teacher))],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  for stage in ("td_indomain", "fd_indomain"):
    for n in (1, 8):
      script = _DISTILL % (n, n, stage, str(teacher / "model"), str(tmp_path / f"{stage}{n}"))
      out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                           text=True)
      assert out.returncode == 0, out.stderr[-3000:]
    one, eight = losses(tmp_path / f"{stage}1"), losses(tmp_path / f"{stage}8")
    assert [s for s, _ in one] == [s for s, _ in eight] == [1, 2, 3], stage
    np.testing.assert_allclose([l for _, l in one], [l for _, l in eight], rtol=1e-5,
                               err_msg=stage)
