"""IRF (One-to-Transfer-All): the re-represented dataset keeps the task's ids and labels and
its images are the VQGAN's decode of the originals (checked against the VQGAN called
directly); the stage is skipped when finished and resumes when interrupted; finetune trains on
it while validating and testing on the originals; select chooses on validation; the tiny IRF
pipeline end to end (slow)."""
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kt_jax import config_defaults, models, stages
from kt_jax.convert import kt_format
from kt_jax.data import fewshot, shipped
from kt_jax.errors import UserError
from kt_jax.eval import report
from kt_jax.stages import checks, finetune, rerepresent
from test_configs import ROOT, load


def _random_variables(module, size: int):
  """Random weights of the module's shapes (eval_shape: no op-by-op init to compile)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny_vqgan(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("vqgan") / "model")
  # vqgan_tiny's layout at 8 channels (a quick compile): 32 px -> 16x16 codes.
  module = models.create("vqgan_tiny", codebook_size=32, base_channels=8, num_groups=4,
                         channel_multiplier=(1, 2), latent_channels=8)
  variables = _random_variables(module, 32)
  kt_format.save(out, module, variables, {"input_spec": {"image_size": 32, "mean": [0.5] * 3,
                                                         "std": [0.5] * 3}})
  return out, module, variables


def _config(vqgan_path, **data):
  c = config_defaults.rerepresent_config()
  c.vqgan_path = vqgan_path
  c.batch_size = 8
  c.data.labels_per_class, c.data.val_per_class = 3, 1
  c.data.task_options.mnist.test_per_class = 3
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def rerepresented(tiny_vqgan, tmp_path_factory):
  path, _, _ = tiny_vqgan
  config = _config(path)
  workdir = str(tmp_path_factory.mktemp("rerep"))
  summary = stages.run(config, workdir)
  return config, workdir, summary


def _manifest(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, rerepresent.MANIFEST))]


def test_rerepresented_dataset_keeps_ids_labels_and_is_the_vqgan_decode(tiny_vqgan,
                                                                        rerepresented):
  _, module, variables = tiny_vqgan
  config, workdir, summary = rerepresented
  splits = fewshot.build_splits(config.data, config.data.split_seed)
  digits, labels = shipped.mnist_digits()
  rows = _manifest(workdir)
  assert [r["id"] for r in rows] == [int(i) for i in splits.train_ids]  # 2 per class
  assert len(rows) == 20 and summary["images"] == 20
  assert [r["label"] for r in rows] == [int(labels[r["id"]]) for r in rows]
  assert all(r["file"].startswith(f"images/{r['class']}/") for r in rows)
  assert not set(r["id"] for r in rows) & set(splits.val_ids.tolist())  # val not touched
  # The VQGAN called directly on the digit, resized to its 32 px as PIL does it.
  originals = np.stack([
      np.asarray(Image.fromarray(np.repeat(digits[r["id"]][..., None], 3, -1)).resize(
          (32, 32), Image.BICUBIC)) for r in rows]).astype(np.float32) / 127.5 - 1.0
  direct = jax.jit(lambda v, x: module.apply(v, x, train=False)["recon"])
  recon = np.asarray(direct(variables, jnp.asarray(originals)))
  expected = np.clip(np.round((recon + 1.0) * 127.5), 0, 255)
  written = np.stack([np.asarray(Image.open(os.path.join(workdir, r["file"])))
                      for r in rows]).astype(np.float32)
  assert written.shape == (20, 32, 32, 3) and written.std() > 5  # not a constant image
  diff = np.abs(written - expected)
  assert diff.max() <= 1 and diff.mean() < 0.01  # rounding of float noise only
  assert os.path.exists(os.path.join(workdir, rerepresent.CONTACT_SHEET))
  assert json.load(open(os.path.join(workdir, "splits.json")))["train_ids"] == [
      r["id"] for r in rows]


def test_rerepresent_is_skipped_when_finished_and_resumes_when_interrupted(rerepresented,
                                                                          tmp_path):
  config, finished, _ = rerepresented
  tmp_path = tmp_path / "copy"
  shutil.copytree(finished, tmp_path)
  first = json.loads((tmp_path / "summary.json").read_text())
  rows = _manifest(str(tmp_path))
  files = [tmp_path / r["file"] for r in rows]
  content = {f: f.read_bytes() for f in files}
  mtimes = {f: f.stat().st_mtime_ns for f in files}
  os.remove(files[0])
  again = stages.run(config, str(tmp_path))  # finished: skipped, nothing rewritten
  assert again == first and not files[0].exists()
  # Interrupted (no summary, one image missing): only that image is encoded again.
  os.remove(tmp_path / "summary.json")
  stages.run(config, str(tmp_path))
  assert files[0].read_bytes() == content[files[0]]
  assert all(f.stat().st_mtime_ns == mtimes[f] for f in files[1:])
  assert _manifest(str(tmp_path)) == rows


def _finetune_config(train_images, **data):
  c = config_defaults.finetune_config()
  c.backbone.name = "resnet18"
  c.total_steps = 2
  c.data.labels_per_class, c.data.val_per_class = 3, 1
  c.data.task_options.mnist.test_per_class = 3
  c.data.train_images = train_images
  c.data.update(data)
  return c


def test_finetune_trains_on_the_rerepresented_images_and_tests_on_the_originals(
    rerepresented):
  _, workdir, _ = rerepresented
  config = _finetune_config(workdir)
  finetune.validate(config)
  splits = finetune.build_splits(config)
  original = fewshot.build_splits(config.data, config.data.split_seed)
  np.testing.assert_array_equal(splits.train_ids, original.train_ids)
  rows = _manifest(workdir)
  for k in (0, len(splits.train) - 1):
    record = splits.train[k]
    assert record["id"] == rows[k]["id"] and record["label"] == rows[k]["label"]
    pixels = np.asarray(Image.open(io.BytesIO(record["image"])))
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(os.path.join(
        workdir, rows[k]["file"]))))
  # Validation and test are the task's own images (28 px digits), untouched.
  digits, _ = shipped.mnist_digits()
  for source in (splits.val, splits.test):
    record = source[0]
    np.testing.assert_array_equal(record["image"][..., 0], digits[record["id"]])
  assert splits.val is not None and len(splits.val) == len(original.val)


def test_finetune_refuses_rerepresented_images_of_another_split(rerepresented, tmp_path):
  _, workdir, _ = rerepresented
  with pytest.raises(UserError, match="another train split"):
    finetune.build_splits(_finetune_config(workdir, split_seed=1))
  with pytest.raises(UserError, match="not a finished rerepresent"):
    finetune.validate(_finetune_config(str(tmp_path)))


def test_rerepresent_refuses_a_model_that_is_not_a_vqgan(tmp_path):
  module = models.create("resnet18", width=4, stage_sizes=(1, 1))
  variables = _random_variables(module, 8)
  kt_format.save(str(tmp_path / "m"), module, variables)
  with pytest.raises(UserError, match="not a VQGAN"):
    stages.run(_config(str(tmp_path / "m")), str(tmp_path / "w"))


def _candidate(root, name, val, test):
  workdir = root / name
  (workdir / "model").mkdir(parents=True)
  (workdir / "summary.json").write_text(json.dumps({"val": val, "test": test}))
  report.append_row(str(root / "sweep"), {"method": f"grid {name}", "metric": "top1",
                                          "val": val, "test": test, "workdir": str(workdir)})
  return str(workdir)


def test_select_chooses_on_validation_links_the_model_and_copies_the_row(tmp_path):
  a = _candidate(tmp_path, "a", 0.2, 0.9)   # best test, not chosen: test is never looked at
  b = _candidate(tmp_path, "b", 0.5, 0.1)
  c = _candidate(tmp_path, "c", 0.5, 0.3)   # a tie goes to the first
  config = config_defaults.select_config()
  config.candidates, config.report.method = (a, b, c), "chosen"
  summary = stages.run(config, str(tmp_path / "best"))
  assert summary["chosen"] == b and summary["test"] == 0.1
  assert os.path.realpath(tmp_path / "best" / "model") == os.path.realpath(
      os.path.join(b, "model"))
  rows = report.read_rows(str(tmp_path))
  assert [(r["method"], r["val"], r["chosen"]) for r in rows] == [("chosen", 0.5, b)]


def test_irf_configs_build_the_paper_grids_and_pass_their_checks():
  module = load(os.path.join(ROOT, "configs", "irf_tiny.py"))
  paper = module.get_config("paper")
  names = paper.order
  assert sum(n.startswith("deliver_lr") for n in names) == 4
  assert sum(n.startswith("calibrate_lr") for n in names) == 12
  assert sum(n.startswith("ft_lr") for n in names) == 12
  lrs = sorted(paper.stages[n].optimizer.lr for n in names if n.startswith("deliver_lr"))
  np.testing.assert_allclose(lrs, [1e-3, 1e-2, 1e-1, 1.0])
  wds = {paper.stages[n].optimizer.weight_decay for n in names if n.startswith("calibrate_lr")}
  assert wds == {1e-3, 1e-4, 1e-5}
  for name in names:
    stage = paper.stages[name]
    if stage.stage == "finetune":
      assert stage.optimizer.name == "sgd" and stage.optimizer.nesterov
      assert stage.data.augment.ratio == (1.0, 1.0) and stage.data.augment.hflip == 0
      rerep = name.startswith("deliver_")
      assert stage.data.train_images == ("{stage:rerepresent}" if rerep else "")
      assert stage.finetune.mode == ("linear_probe" if name.startswith(("deliver_", "lp_"))
                                     else "full")
  assert paper.stages.calibrate_lr0_wd0.backbone.path == "{stage:deliver}/model"
  for arg in ("", "tiny", "paper"):
    checks.check(module.get_config(arg))


@pytest.mark.slow  # ~9 minutes on the loaded 2-core CPU (11 finetunes, a VQGAN, compiles)
def test_irf_tiny_pipeline_end_to_end(tmp_path):
  config = load(os.path.join(ROOT, "configs", "irf_tiny.py")).get_config("tiny")
  summary = stages.run(config, str(tmp_path))
  assert set(summary["stages"]) == set(config.order)
  rows = report.read_rows(str(tmp_path))
  assert [r["method"].split(" ")[0] for r in rows] == ["IRF", "IRF", "LP", "FT"]
  assert len(report.read_rows(str(tmp_path / "sweep"))) == 6
  # Calibrating starts from the chosen delivering model: its pretraining is that stage's.
  deliver = json.loads((tmp_path / "deliver" / "summary.json").read_text())["chosen"]
  calibrate = rows[1]
  assert calibrate["pretrain_images"] == 2 * 8
  spec = json.loads((tmp_path / "calibrate" / "model" / "model.json").read_text())
  assert spec["stage"] == "finetune"
  assert deliver.startswith(str(tmp_path / "deliver_lr"))
  assert (tmp_path / "rerepresent" / "contact_sheet.png").exists()
