"""The size curve reads the in-domain task-oriented rows of a report, sized or the chain's own."""
import importlib.util
import os

from test_trainer import ROOT


def _module():
  spec = importlib.util.spec_from_file_location(
      "transfer_size_curve", os.path.join(ROOT, "benchmarks", "transfer_size_curve.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_curve_orders_sizes_and_ignores_other_rows():
  curve = _module().curve
  td = "task-oriented distillation + finetune"
  rows = [{"method": td, "transfer_set": "in-domain (unlabelled task images)", "test": 0.54},
          {"method": td, "transfer_set": "in-domain, 500 images", "test": 0.50},
          {"method": td, "transfer_set": "generic (shipped natural-image pool)", "test": 0.55},
          {"method": "student from scratch", "transfer_set": "-", "test": 0.29},
          {"method": td, "transfer_set": "in-domain, 250 images", "test": 0.43},
          {"method": td, "transfer_set": "in-domain (unlabelled task images)", "test": 0.94,
           "student": "mobilenet_v2 (ImageNet init)"}]
  assert curve(rows) == [(250, 0.43), (500, 0.50), (2000, 0.54)]
