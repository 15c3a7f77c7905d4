"""The `finetune` stage end to end at 32 px: a linear probe leaves a pretrained backbone
bit-identical (weights and BatchNorm statistics), lp_ft probes then trains everything from
the probed head, segmentation trains on a source that yields masks; the losses against
independent formulas; the one-line errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from kt_jax import config_defaults, convert, models, stages
from kt_jax.convert import kt_format
from kt_jax.data import fewshot
from kt_jax.errors import UserError
from kt_jax.objectives import supervised
from kt_jax.stages import checks, finetune
import config_overrides


def tiny_config(**overrides):
  c = config_defaults.finetune_config()
  c.backbone.name = "vit_tiny_patch16"
  c.backbone.overrides.depth = 1
  c.image_size, c.batch_size, c.total_steps = 32, 8, 3
  c.log_every_steps, c.async_checkpoints = 1, False
  c.eval.batch_size = 32
  c.data.labels_per_class, c.data.val_per_class = 3, 1
  c.data.task_options.mnist.test_per_class = 3
  return config_overrides.apply(c, overrides)


def _flat(tree):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(tree)))


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
  """A kt_jax model directory of a two-block, width-4 ResNet with non-trivial BatchNorm
  statistics (small, so the train step compiles fast)."""
  out = str(tmp_path_factory.mktemp("resnet") / "model")
  module = models.create("resnet18", width=4, stage_sizes=(1, 1))
  variables = jax.jit(module.init)(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.rand(*x.shape).astype(x.dtype),
                           variables)
  kt_format.save(out, module, variables, {"input_spec": {"image_size": 32, "mean": [0.5] * 3,
                                                         "std": [0.5] * 3}})
  return out, variables


@pytest.mark.slow  # ~60 s of CPU (compiles the train step, eval, FLOP count; orbax, plots)
def test_linear_probe_leaves_the_backbone_bit_identical(tiny_resnet, tmp_path):
  path, before = tiny_resnet
  config = tiny_config(**{"finetune.mode": "linear_probe", "optimizer.lr": 0.1,
                          "backbone.name": "", "backbone.path": path, "report.dir": ".."})
  config.backbone.overrides = {}
  summary = stages.run(config, str(tmp_path / "lp"))
  module, after = convert.load_pretrained(str(tmp_path / "lp" / "model"))
  assert type(module).__name__ == "Classifier"
  for col in ("params", "batch_stats"):
    want, got = _flat(before[col]), _flat(after[col]["backbone"])
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"{col}/{key}")
  head = np.asarray(after["params"]["head"]["kernel"])
  assert np.abs(head).max() > 0 and np.isfinite(head).all()
  # The head trained, the report row is written, the split is recorded.
  spec = json.loads((tmp_path / "lp" / "model" / "model.json").read_text())
  assert spec["class_names"] == [str(i) for i in range(10)]
  rows = json.loads((tmp_path / "report.json").read_text())
  assert len(rows) == 1 and rows[0]["test"] == summary["test"]
  assert rows[0]["student_params"] == sum(x.size for x in jax.tree.leaves(after["params"]))
  assert rows[0]["student_flops"] > 0 and rows[0]["finetune_flops"] > 0
  assert rows[0]["pretrain_flops"] is None  # a model directory with no training workdir
  assert (tmp_path / "report.md").read_text().count("\n") == 3
  assert (tmp_path / "report_compute.png").stat().st_size > 0
  cost = json.loads((tmp_path / "lp" / "train_cost.json").read_text())
  assert cost["flops_per_step"] > 0 and cost["batch_size"] == 8
  split = json.loads((tmp_path / "lp" / "splits.json").read_text())
  assert len(split["train_ids"]) == 20 and len(split["val_ids"]) == 10


@pytest.mark.slow
def test_lp_ft_probes_then_trains_everything(tmp_path):
  config = tiny_config(**{"finetune.mode": "lp_ft", "finetune.probe_steps": 2,
                          "report.dir": ""})
  stages.run(config, str(tmp_path))
  probe_dir = tmp_path / finetune.PROBE_DIR
  assert (probe_dir / "summary.json").exists()
  probe_config = json.loads((probe_dir / "config.json").read_text())
  assert probe_config["finetune"]["mode"] == "linear_probe"
  assert probe_config["total_steps"] == 2
  _, probed = convert.load_pretrained(str(probe_dir / "model"))
  _, final = convert.load_pretrained(str(tmp_path / "model"))
  # Phase 1 moved only the head (the seed's init, recomputed here outside the trainer's
  # compiled init, agrees to float rounding; one Adam step would move it by ~lr), phase 2
  # moved the backbone.
  init_backbone = _scratch_backbone(config)
  for key, value in _flat(init_backbone).items():
    np.testing.assert_allclose(_flat(probed["params"]["backbone"])[key], value, atol=1e-6)
  moved = [k for k, v in _flat(final["params"]["backbone"]).items()
           if not np.array_equal(v, _flat(probed["params"]["backbone"])[k])]
  assert moved
  # Phase 2 starts from the probed head, not a fresh one.
  import ml_collections
  phase2 = ml_collections.ConfigDict(config.to_dict())
  phase2.backbone.name, phase2.backbone.path = "", str(probe_dir / "model")
  phase2.finetune.mode = "full"
  backbone = finetune.load_backbone(phase2, jnp.float32)
  objective = finetune.build_objective(phase2, fewshot.build_splits(config.data, 0), backbone)
  params_hook, _ = finetune.init_hooks(backbone, objective, keep_head=True)
  fresh, _ = objective.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
  started = params_hook(fresh)
  np.testing.assert_array_equal(started["model"]["head"]["kernel"],
                                probed["params"]["head"]["kernel"])


def _scratch_backbone(config):
  """The seed's initial backbone, as the trainer draws it (init key split from the seed)."""
  from kt_jax.stages.finetune import build_objective
  objective = build_objective(config, fewshot.build_splits(config.data, 0))
  init_key = jax.random.split(jax.random.key(config.seed))[0]
  params, _ = objective.init(init_key, {"image": jnp.zeros((1, 32, 32, 3))})
  return params["model"]["backbone"]


def _synthetic_segmentation(options, seed):
  """32x32 images, a bright square of class 1 or 2 on a class-0 background; a 2-pixel border
  of the square is labelled ignore (255)."""
  rng = np.random.default_rng(seed)
  n = options.get("n", 24)
  images = rng.integers(0, 40, (n, 32, 32, 3)).astype(np.uint8)
  masks = np.zeros((n, 32, 32), np.uint8)
  labels = np.arange(n) % 2 + 1
  for i in range(n):
    y, x = rng.integers(0, 16, 2)
    masks[i, y:y + 16, x:x + 16] = 255
    masks[i, y + 2:y + 14, x + 2:x + 14] = labels[i]
    images[i, y:y + 16, x:x + 16] = (200, 40, 40) if labels[i] == 1 else (40, 40, 200)
  train = fewshot.InMemorySegmentationSource(images[:16], masks[:16], labels[:16] - 1)
  test = fewshot.InMemorySegmentationSource(images[16:], masks[16:], labels[16:] - 1)
  return fewshot.LabelledPool("synthetic_seg", train, labels[:16] - 1, test,
                              ("background", "square_a", "square_b"),
                              kind=fewshot.SEGMENTATION, strata=("square_a", "square_b"))


fewshot.register_task("synthetic_seg", _synthetic_segmentation, fewshot.SEGMENTATION)


@pytest.mark.slow
def test_segmentation_trains_on_masks(tmp_path):
  config = tiny_config(**{"data.task": "synthetic_seg", "data.labels_per_class": 4,
                          "total_steps": 2, "report.dir": "."})
  summary = stages.run(config, str(tmp_path))
  assert summary["metric"] == "miou" and 0 <= summary["test"] <= 1
  module, variables = convert.load_pretrained(str(tmp_path / "model"))
  assert type(module).__name__ == "Segmenter"
  out = module.apply(variables, jnp.zeros((1, 32, 32, 3)))
  assert out["logits"].shape == (1, 32, 32, 3)
  assert json.loads((tmp_path / "report.json").read_text())[0]["metric"] == "miou"


def test_lp_ft_phase_two_starts_from_the_probe(tmp_path):
  """Without training: the probe phase's config, and the full phase initialised from a
  probed task model (its backbone and its head)."""
  config = tiny_config(**{"finetune.mode": "lp_ft", "finetune.probe_steps": 5,
                          "finetune.probe_lr": 0.5, "optimizer.layer_decay": 0.8})
  probe = finetune._probe_config(config)
  assert (probe.finetune.mode, probe.total_steps, probe.optimizer.lr, probe.report.dir,
          probe.optimizer.layer_decay) == ("linear_probe", 5, 0.5, "", 0.0)
  assert finetune._with_freeze(probe).optimizer.freeze == finetune.BACKBONE_FREEZE
  splits = fewshot.build_splits(config.data, 0)
  objective = finetune.build_objective(config, splits)
  init = jax.jit(objective.init)
  params, state = init(jax.random.key(7), {"image": jnp.zeros((1, 32, 32, 3))})
  module, variables = objective.feature_model(params, state)
  kt_format.save(str(tmp_path / "probe_model"), module, jax.tree.map(np.asarray, variables))
  config.backbone.name, config.backbone.path = "", str(tmp_path / "probe_model")
  backbone = finetune.load_backbone(config, jnp.float32)
  objective = finetune.build_objective(config, splits, backbone)
  fresh, _ = init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})  # same architecture
  params_hook, _ = finetune.init_hooks(backbone, objective, keep_head=True)
  started = params_hook(fresh)
  for key, value in _flat(params["model"]).items():
    np.testing.assert_array_equal(_flat(started["model"])[key], value)
  fresh_head = finetune.init_hooks(backbone, objective, keep_head=False)[0](fresh)
  np.testing.assert_array_equal(fresh_head["model"]["head"]["kernel"],
                                fresh["model"]["head"]["kernel"])


def test_label_smoothing_cross_entropy_matches_numpy():
  r = np.random.RandomState(0)
  logits, labels = r.randn(6, 5).astype(np.float32) * 3, r.randint(0, 5, 6)
  a = 0.1
  target = np.full((6, 5), a / 5) + (1 - a) * np.eye(5)[labels]
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -(target * log_p).sum(-1).mean()
  np.testing.assert_allclose(float(supervised.cross_entropy(logits, labels, a)), want, rtol=1e-5)
  np.testing.assert_allclose(
      float(supervised.cross_entropy(logits, labels, 0.0)),
      float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()), rtol=1e-6)


def test_pixel_cross_entropy_skips_the_ignore_label():
  r = np.random.RandomState(1)
  logits = r.randn(2, 4, 4, 3).astype(np.float32)
  mask = r.randint(0, 3, (2, 4, 4))
  mask[0, :2] = 255
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  keep = mask != 255
  want = -np.take_along_axis(log_p, np.where(keep, mask, 0)[..., None], -1)[..., 0][keep].mean()
  loss, count = supervised.pixel_cross_entropy(logits, mask)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert int(count) == keep.sum()


def test_class_weighted_pixel_cross_entropy_matches_torch():
  """`class_weights` as PyTorch's cross_entropy(weight=, ignore_index=): each pixel weighted
  by its class's weight, the mean over the weights of the pixels scored."""
  import torch
  import torch.nn.functional as F
  r = np.random.RandomState(2)
  logits = r.randn(2, 5, 6, 4).astype(np.float32)
  mask = r.randint(0, 4, (2, 5, 6))
  mask[1, :3] = 255
  weights = (0.2, 3.0, 1.5, 0.7)
  loss, _ = supervised.pixel_cross_entropy(logits, mask, class_weights=weights)
  want = F.cross_entropy(torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(mask),
                         weight=torch.tensor(weights), ignore_index=255)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_median_frequency_weights_and_pixel_counts():
  masks = np.zeros((2, 4, 4), np.uint8)  # class 0: 20 pixels, 1: 6, 2: 2, 255: 4 ignored
  masks[0, 0, :] = 1
  masks[1, 0, :2] = 1
  masks[1, 1, :2] = 2
  masks[1, 3, :] = 255
  source = fewshot.InMemorySegmentationSource(np.zeros((2, 4, 4, 3), np.uint8), masks, [0, 1])
  counts = finetune.pixel_counts(source, 4, 255)
  np.testing.assert_array_equal(counts, [20, 6, 2, 0])
  weights = supervised.median_frequency_weights(counts)
  np.testing.assert_allclose(weights, [6 / 20, 1.0, 3.0, 1.0])  # median frequency 6/28


def test_segmentation_head_on_a_model_without_spatial_output_is_an_error():
  import flax.linen as nn

  class PooledOnly(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return {"x_norm_clstoken": nn.Dense(4)(x.mean(axis=(1, 2)))}
  with pytest.raises(UserError, match="spatial output"):
    checks.check_spatial(PooledOnly(), 32, "pooled_only")
  checks.check_spatial(models.create("resnet18", width=8), 32, "resnet18")  # no error


@pytest.mark.parametrize("change,match", [
    ({"finetune.mode": "probe"}, "finetune.mode"),
    ({"backbone.path": "random:resnet18"}, "exactly one"),
    ({"finetune.mode": "lp_ft"}, "probe_steps"),
    ({"data.task": "nope"}, "not a known task"),
    ({"data.val_per_class": 3}, "leaves no training image"),
    ({"head.feature": "mean"}, "head.feature"),
])
def test_bad_configs_fail_before_compute(change, match):
  with pytest.raises(UserError, match=match):
    checks.check(tiny_config(**change))
