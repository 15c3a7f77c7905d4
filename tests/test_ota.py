"""One-to-Transfer-All as one pipeline (configs/ota_tiny.py): the orderings read the right
models (IRF-DIGG distils from the IRF teacher, DIGG-IRF runs IRF on the DIGG-distilled
student with the shared re-represented images), the `domain_gap` stage's distances (FD of a
set to itself is 0, a perturbed copy is farther, and each row equals the Frechet distance of
features computed independently, image by image) and the report's FD table."""
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from kt_jax import config_defaults, convert, stages
from kt_jax.eval import fd, report
from kt_jax.stages import checks
from test_configs import ROOT, load


def _ota(arg=""):
  return load(os.path.join(ROOT, "configs", "ota_tiny.py")).get_config(arg)


def test_ota_orderings_read_the_right_models():
  config = _ota()
  s = config.stages
  # IRF-DIGG: the IRF model (calibrate) teaches on the DIGG images; then FT and LP+FT.
  assert s.irf_kd_digg.teacher.path == "{stage:calibrate}/model"
  assert s.irf_kd_digg.data.path == "{stage:digg}/images"
  assert s.irf_kd_digg_ft.backbone.path == "{stage:irf_kd_digg}/model"
  assert s.irf_kd_digg_lpft.finetune.mode == "lp_ft"
  # Every other KD has the ImageNet VFM as teacher, the same student, steps and batch.
  kds = [n for n in config.order if n.startswith("kd_") and not n.endswith("_ft")]
  assert kds == ["kd_digg", "kd_raw", "kd_upstream"]
  for name in kds + ["irf_kd_digg"]:
    assert (s[name].student.name, s[name].total_steps, s[name].batch_size) == (
        s.kd_digg.student.name, s.kd_digg.total_steps, s.kd_digg.batch_size)
  assert {s[n].teacher.path for n in kds} == {"efficientnet_lite2"}
  # The VFM finetunes forget the ImageNet BatchNorm statistics fast enough (see the config).
  assert {s[n].backbone.overrides.get("bn_momentum") for n in config.order
          if n.startswith(("deliver_", "lp_", "ft_"))} == {0.9}
  # DIGG-IRF: IRF of the DIGG-distilled student, on the one rerepresent stage's images.
  assert config.order.count("rerepresent") == 1
  deliver = s.digg_irf_deliver_lr0
  assert deliver.backbone.path == "{stage:kd_digg}/model"
  assert deliver.data.train_images == "{stage:rerepresent}"
  assert deliver.finetune.mode == "linear_probe" and deliver.image_size == s.kd_digg.image_size
  assert s.digg_irf_calibrate_lr0.backbone.path == "{stage:digg_irf_deliver}/model"
  assert s.digg_irf_calibrate_lr0.report.method.startswith("DIGG-IRF: IRF")
  # Every finetune evaluates the same split.
  splits = {(c.data.task, c.data.labels_per_class, c.data.val_per_class, c.data.split_seed,
             c.data.task_options.mnist.test_per_class)
            for c in s.values() if c.stage == "finetune"}
  assert len(splits) == 1
  assert dict(s.domain_gap.sets) == {"raw upstream": "upstream",
                                     "re-represented": "{stage:rerepresent}/images",
                                     "DIGG": "{stage:digg}/images"}
  assert s.domain_gap.reference == "{stage:digg}/originals"
  for arg in ("", "tiny"):
    checks.check(_ota(arg))


def test_kd_budget_variant_only_adds_stages():
  """`:kd_steps=N` grows a finished ota_tiny workdir: every earlier stage is unchanged."""
  base, grown = _ota(), _ota("kd_steps=800")
  assert grown.order[:len(base.order)] == base.order
  assert all(grown.stages[n].to_dict() == base.stages[n].to_dict() for n in base.order)
  assert grown.order[len(base.order):] == ("kd_digg_800", "kd_digg_800_ft", "kd_raw_800",
                                           "kd_raw_800_ft", "scratch", "kd_digg_sgd_ft")
  assert grown.stages.kd_raw_800.total_steps == 800
  assert grown.stages.kd_raw_800.data.path == "{stage:digg}/originals"
  assert grown.stages.scratch.backbone.name == "mobilenet_v2"
  # The control differs from DIGG-IRF's calibration only by starting from kd_digg, not deliver.
  control, calibrate = grown.stages.kd_digg_sgd_ft, grown.stages.digg_irf_calibrate_lr0
  assert control.backbone.path == "{stage:kd_digg}/model"
  assert control.optimizer.to_dict() == calibrate.optimizer.to_dict()
  assert control.total_steps == calibrate.total_steps
  with pytest.raises(ValueError, match="kd_steps=N"):
    _ota("kd_steps=many")


def _write_images(folder, images):
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.png"))


def _reference_features(model, size, images):
  """Pooled features image by image, resized as the evaluators do (short side to
  size / 0.875, bicubic, centre crop), normalised by hand: an independent path."""
  module, variables = convert.load_pretrained(model)
  spec = convert.input_spec(model, size)
  out = []
  for image in images:
    resize = math.floor(size / 0.875)
    pil = Image.fromarray(image).resize((resize, resize), Image.BICUBIC)
    top = (resize - size) // 2
    x = np.asarray(pil, np.float32)[top:top + size, top:top + size] / 255.0
    x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    out.append(np.asarray(module.apply(variables, x[None].astype(np.float32))["x_norm_clstoken"]
                          )[0])
  return np.stack(out)


def test_domain_gap_stage(tmp_path):
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (12, 24, 24, 3), dtype=np.uint8)
  noisy = np.clip(base.astype(int) + rng.integers(-90, 90, base.shape), 0, 255).astype(np.uint8)
  _write_images(tmp_path / "ref", base)
  shutil.copytree(tmp_path / "ref", tmp_path / "same")
  _write_images(tmp_path / "noisy" / "class_a", noisy)   # class subfolders are read too
  c = config_defaults.domain_gap_config()
  c.model, c.image_size, c.batch_size = "random:resnet18", 32, 5
  c.reference = str(tmp_path / "ref")
  c.sets = {"same": str(tmp_path / "same"), "noisy": str(tmp_path / "noisy"),
            "upstream": "upstream"}
  c.data.pool_size, c.data.pool_crop_size = 10, 24
  checks.check(c)
  out = stages.run(c, str(tmp_path / "gap"))
  assert out["same"] == pytest.approx(0.0, abs=1e-3)
  assert out["noisy"] > 1e-2 and out["upstream"] > 1e-2
  ref = _reference_features("random:resnet18", 32, base)
  want = fd.feature_distance(ref, _reference_features("random:resnet18", 32, noisy))
  assert out["noisy"] == pytest.approx(want, rel=2e-2)
  rows = report.read_rows(str(tmp_path))
  assert [r["metric"] for r in rows] == ["fd"] * 3
  md = (tmp_path / "report.md").read_text()
  assert "Domain gap" in md and "| noisy (12) |" in md
  c.sets = {"missing": str(tmp_path / "nowhere")}
  with pytest.raises(Exception, match="does not exist"):
    stages.run(c, str(tmp_path / "gap2"))


def test_report_keeps_fd_rows_out_of_the_models_table(tmp_path):
  report.append_row(str(tmp_path), {"method": "scratch", "metric": "top1", "test": 0.3})
  report.append_row(str(tmp_path), {"method": "domain gap (FD)", "metric": "fd",
                                    "test": 12.5, "reference": "digits (80)",
                                    "transfer_set": "DIGG (1280)", "teacher": "m"})
  models, gaps = (tmp_path / "report.md").read_text().split("Domain gap")
  assert "scratch" in models and "DIGG" not in models
  assert "| digits (80) | DIGG (1280) | m | 12.5 |" in gaps


@pytest.mark.slow  # every OTA stage with toy models, 2 steps each: ~5 min, compile-bound
def test_ota_tiny_pipeline_end_to_end(tmp_path):
  config = _ota("tiny")
  summary = stages.run(config, str(tmp_path))
  assert set(summary["stages"]) == set(config.order)
  rows = report.read_rows(str(tmp_path))
  methods = [r["method"] for r in rows]
  assert sum(m.startswith("DIGG-IRF: IRF (") for m in methods) == 1
  assert "feature KD (L2) + LP+FT" in methods
  assert sum(r["metric"] == "fd" for r in rows) == 3
