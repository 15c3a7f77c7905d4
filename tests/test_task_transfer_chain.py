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


def _flat(config):
  """Every leaf of a ConfigDict as 'a.b.c' -> value."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


def test_chain_variants_change_only_what_they_name():
  get_config = load(os.path.join(ROOT, "configs", "task_transfer_mnist.py")).get_config
  base = _flat(get_config(""))
  shorter = _flat(get_config("distill_steps=300"))
  changed = {k for k in base if base[k] != shorter[k]}
  distills = {"td_indomain", "td_generic", "fd_indomain", "fd_generic", "td_indomain_imagenet"}
  assert changed == {f"stages.{n}.{k}" for n in distills for k in (
      "total_steps", "checkpoint_every_steps", "optimizer.warmup_steps")}
  assert all(shorter[f"stages.{n}.total_steps"] == 300 for n in distills)
  grown = get_config("sizes=250/500,distill_steps=300")
  assert [n for n in grown.order if n not in get_config("").order] == [
      "td_indomain_250", "td_indomain_250_ft", "td_indomain_500", "td_indomain_500_ft"]
  assert grown.stages.td_indomain_250.total_steps == 300
  # The ImageNet-initialised distillation differs from td_indomain in its student only.
  inet, plain = _flat(grown.stages.td_indomain_imagenet), _flat(grown.stages.td_indomain)
  assert {k for k in plain if plain[k] != inet.get(k)} == {"student.name", "student.path"}
  assert (inet["student.path"], inet["student.name"]) == ("mobilenet_v2", "")
  assert grown.stages.td_indomain_imagenet_ft.backbone.path == "{stage:td_indomain_imagenet}/model"
  assert grown.stages.td_indomain_250.data.pool_mnist == 250
  with pytest.raises(ValueError, match="distill_steps=N"):
    get_config("steps=900")
  seg = load(os.path.join(ROOT, "configs", "task_transfer_seg.py")).get_config("distill_steps=600")
  assert seg.stages.fd_generic.total_steps == 600
  assert seg.stages.vfm.data.task == "digit_seg"


def test_segmentation_chain_gives_every_model_the_skip_decoder():
  """digit_seg: every finetune (the VFM's and each student row's) puts the skip decoder on its
  CNN and scores the masks at the task's 64 px, whatever its input size (students run at
  32 px); distillation students take the teacher's head. The MNIST chain has neither."""
  seg = load(os.path.join(ROOT, "configs", "task_transfer_seg.py")).get_config("")
  finetunes = [n for n in seg.order if seg.stages[n].stage == "finetune"]
  assert len(finetunes) == 8
  for name in finetunes:
    c = seg.stages[name]
    assert (c.head.hidden, c.head.skip_stride, c.eval.mask_size) == (32, 4, 64), name
  assert seg.stages.vfm.image_size == 64 and seg.stages.scratch.image_size == 32
  mnist = load(os.path.join(ROOT, "configs", "task_transfer_mnist.py")).get_config("")
  assert all(mnist.stages[n].head.skip_stride == 0 and mnist.stages[n].eval.mask_size == 0
             for n in mnist.order if mnist.stages[n].stage == "finetune")
