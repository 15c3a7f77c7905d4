"""The report: rows appended (a rerun of a workdir replaces its row), Markdown and the compute
plot written, pretraining compute read from the workdir a model was trained in."""
import json

import pytest

from kt_jax.eval import report


def _row(method, test, flops, workdir):
  return {"method": method, "metric": "top1", "val": test, "test": test,
          "pretrain_flops": flops, "pretrain_images": 10 if flops else 0, "workdir": workdir}


def test_rows_markdown_and_plot(tmp_path):
  report.append_row(str(tmp_path), _row("scratch", 0.2, 0, "/w/a"))
  report.append_row(str(tmp_path), _row("task distill", 0.5, 1e9, "/w/b"))
  report.append_row(str(tmp_path), _row("task distill", 0.6, 2e9, "/w/c"))
  rows = report.append_row(str(tmp_path), _row("scratch", 0.3, 0, "/w/a"))  # rerun of /w/a
  assert [r["workdir"] for r in rows] == ["/w/b", "/w/c", "/w/a"]
  assert json.loads((tmp_path / "report.json").read_text()) == rows
  md = (tmp_path / "report.md").read_text().splitlines()
  assert len(md) == 5 and "| scratch |" in md[-1] and "30.0%" in md[-1]
  assert (tmp_path / "report_compute.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="test"):
    report.append_row(str(tmp_path), {"method": "x", "metric": "top1"})


def test_pretraining_compute_from_the_training_workdir(tmp_path):
  work = tmp_path / "distill"
  (work / "model").mkdir(parents=True)
  (work / report.COST_FILE).write_text(json.dumps({"flops_per_step": 5.0, "batch_size": 4}))
  (work / "model" / "model.json").write_text(json.dumps({"source": str(work), "step": 30}))
  got = report.pretraining_compute(str(work / "model"))
  assert (got["images"], got["flops"], got["steps"]) == (120, 150.0, 30)
  # An extracted intermediate checkpoint counts up to its own step.
  (tmp_path / "step10").mkdir()
  (tmp_path / "step10" / "model.json").write_text(json.dumps({"source": str(work), "step": 10}))
  assert report.pretraining_compute(str(tmp_path / "step10"))["flops"] == 50.0
  assert report.pretraining_compute("random:resnet18") == {"images": 0, "flops": 0.0}
  assert report.pretraining_compute("efficientnet_lite0")["flops"] is None
