"""The task-oriented transfer chains run end to end at tiny size: every stage in order, one
report row per finetuned model, pretraining compute where a stage of the chain made it."""
import os

import pytest

from kt_jax import stages
from kt_jax.eval import report
from test_configs import load
from test_trainer import ROOT

ROWS = {"finetuned VFM", "task-oriented distillation + finetune",
        "task-agnostic feature distillation + finetune", "student from scratch",
        "ImageNet-pretrained student"}


def _run(tmp_path, name):
  config = load(os.path.join(ROOT, "configs", name)).get_config("tiny")
  summary = stages.run(config, str(tmp_path))
  assert set(summary["stages"]) == set(config.order)
  rows = report.read_rows(str(tmp_path))
  assert len(rows) == 7 and {r["method"] for r in rows} == ROWS
  by_method = {}
  for r in rows:
    by_method.setdefault(r["method"], []).append(r)
  for r in by_method["task-oriented distillation + finetune"] + by_method[
      "task-agnostic feature distillation + finetune"]:
    assert r["pretrain_images"] == 2 * 8 and r["pretrain_flops"] > 0
  assert {r["transfer_set"][:7] for r in by_method["task-oriented distillation + finetune"]} == {
      "in-doma", "generic"}
  assert by_method["student from scratch"][0]["pretrain_images"] == 0
  assert (tmp_path / "report.md").exists()
  return rows


def test_mnist_chain_end_to_end(tmp_path):
  rows = _run(tmp_path, "task_transfer_mnist.py")
  assert {r["metric"] for r in rows} == {"top1"}


@pytest.mark.slow
def test_segmentation_chain_end_to_end(tmp_path):
  rows = _run(tmp_path, "task_transfer_seg.py")
  assert {r["metric"] for r in rows} == {"miou"}
