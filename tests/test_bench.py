"""The benchmark harness on tiny configs: sane positive numbers and valid JSON (no timing
assertions)."""
import json
import os

import numpy as np
import pytest


from kt_jax import bench
from kt_jax.models import create
from test_configs import load
from test_trainer import ROOT, tiny_config


def test_train_step_benchmark(tmp_path):
  report = bench.run(tiny_config(), str(tmp_path), steps=3, warmup=1)
  saved = json.loads((tmp_path / "bench.json").read_text())
  assert saved["kind"] == "train_step" and saved["images_per_s"] == report["images_per_s"]
  for key in ("step_s_median", "images_per_s", "xla_flops_per_image", "matmul_peak_flops",
              "compile_s"):
    assert report[key] > 0, key
  assert 0 < report["utilisation"] < 1.5
  assert report["step_s_p10"] <= report["step_s_median"] <= report["step_s_p90"]


def test_inference_benchmark_on_the_demo_config(tmp_path):
  config = load(os.path.join(ROOT, "configs", "demo.py")).get_config()
  config.eval.batch_size, config.image_size = 4, 64
  report = bench.run(config, str(tmp_path), steps=2, warmup=1)
  assert report["kind"] == "inference" and report["images_per_s"] > 0
  assert report["analytic_flops_per_image"] is None  # a CNN: XLA's count only


def test_analytic_vit_flops_close_to_xla():
  """The analytic count and XLA's cost analysis of the same forward agree within 10%."""
  import jax
  import jax.numpy as jnp
  module = create("vit_small_patch16", depth=2)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  compiled = jax.jit(module.apply).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = bench.vit_forward_flops(module, (64, 64))
  assert abs(cost["flops"] - analytic) / analytic < 0.1


def test_compare_runs_ours_and_the_reference_in_one_invocation(tmp_path):
  from test_configs import load as load_file
  compare = load_file(os.path.join(ROOT, "benchmarks", "compare.py"))
  row = compare.main(["--case", "proteus_tiny", "--steps", "1", "--warmup", "1",
                      "--no-compile", "--json", str(tmp_path / "row.json")])
  saved = json.loads((tmp_path / "row.json").read_text())
  assert saved["ours"]["images_per_s"] > 0
  assert saved["reference"]["eager"]["images_per_s"] > 0
  assert saved["ratio_vs_best_reference"] == pytest.approx(
      row["ours"]["images_per_s"] / row["reference"]["eager"]["images_per_s"])


@pytest.mark.slow  # compiles MobileNetV2 + EfficientNet-Lite2, or the VQGAN + PatchGAN + Lite0
@pytest.mark.parametrize("case", ["task_distill_mnist_toy", "vqgan_toy"])
def test_compare_task_transfer_and_vqgan_cases_at_toy_size(tmp_path, case):
  """The two config-derived cases: our step and the torch reference both run, and the
  reference is built from the same config (its sizes and options read from ours)."""
  from test_configs import load as load_file
  compare = load_file(os.path.join(ROOT, "benchmarks", "compare.py"))
  row = compare.main(["--case", case, "--steps", "1", "--warmup", "1", "--no-compile",
                      "--json", str(tmp_path / "row.json")])
  ours, ref = row["ours"], row["reference"]["eager"]
  assert ours["images_per_s"] > 0 and ref["images_per_s"] > 0
  assert ours["batch"] == ref["batch"] == 4
  if case == "vqgan_toy":
    assert ref["step"] == "vqgan" and ref["perceptual"] and ref["image_size"] == 16
  else:
    assert ref["step"] == "task_transfer" and ref["temperature"] == 2.0
  assert row["ratio_vs_best_reference"] == pytest.approx(
      ours["images_per_s"] / ref["images_per_s"])


def test_input_pipeline_benchmark_folder_and_arrayrecord(tmp_path):
  """Decoded, augmented images/s from a JPEG folder and its ArrayRecord copy, per worker
  count, with a corrupt file counted rather than fatal."""
  from PIL import Image
  from kt_jax.data import arrayrecord
  folder = tmp_path / "images" / "cls"
  folder.mkdir(parents=True)
  r = np.random.RandomState(0)
  for i in range(12):
    Image.fromarray(r.randint(0, 255, (60 + i, 80, 3), np.uint8)).save(folder / f"{i}.jpg")
  (folder / "broken.jpg").write_bytes(b"not a jpeg")
  arrayrecord.write_image_folder_as_arrayrecord(str(tmp_path / "images"), str(tmp_path / "ar"))
  config = tiny_config()
  config.data.path = str(tmp_path / "images")
  config.data.source = "image_folder"
  rows = bench.bench_input(config, [0, 1], batches=3, warmup=1)
  config.data.source, config.data.path = "arrayrecord", str(tmp_path / "ar")
  rows += bench.bench_input(config, [0], batches=3, warmup=1)
  assert [(row["source"], row["workers"]) for row in rows] == [
      ("image_folder", 0), ("image_folder", 1), ("arrayrecord", 0)]
  for row in rows:
    assert row["images"] == 3 * config.batch_size and row["images_per_s"] > 0
    assert row["bad_records"] >= 1  # the broken file was met (and skipped) on the way
