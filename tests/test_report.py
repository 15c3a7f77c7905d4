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


def test_pretraining_compute_adds_the_model_a_run_started_from(tmp_path):
  """A distillation that started from a pretrained student counts that student's compute too:
  another workdir's known compute adds up; shipped weights (trained elsewhere) make it
  unknown, so the report does not place the row at the distillation's FLOPs alone."""
  def workdir(name, flops_per_step, steps, started_from=""):
    work = tmp_path / name
    (work / "model").mkdir(parents=True)
    cost = {"flops_per_step": flops_per_step, "batch_size": 2}
    if started_from:
      cost["started_from"] = started_from
    (work / report.COST_FILE).write_text(json.dumps(cost))
    (work / "model" / "model.json").write_text(json.dumps({"source": str(work), "step": steps}))
    return str(work / "model")
  first = workdir("first", 3.0, 10)
  assert report.pretraining_compute(first) == {"images": 20, "flops": 30.0, "steps": 10,
                                               "workdir": str(tmp_path / "first")}
  second = report.pretraining_compute(workdir("second", 5.0, 4, started_from=first))
  assert (second["images"], second["flops"]) == (8 + 20, 20.0 + 30.0)
  shipped = report.pretraining_compute(workdir("third", 5.0, 4, started_from="mobilenet_v2"))
  assert (shipped["images"], shipped["flops"]) == (None, None)
  scratch = report.pretraining_compute(workdir("fourth", 5.0, 4, started_from="random:resnet18"))
  assert (scratch["images"], scratch["flops"]) == (8, 20.0)


def test_plot_lines_split_a_method_by_student_only_where_it_has_several():
  rows = [dict(_row("td", 0.5, 1e9, "/w/a"), transfer_set="in", student="s"),
          dict(_row("td", 0.6, 2e9, "/w/b"), transfer_set="in", student="s"),
          dict(_row("td", 0.9, None, "/w/c"), transfer_set="in", student="s (ImageNet init)"),
          dict(_row("td", 0.4, 1e9, "/w/d"), transfer_set="gen", student="s")]
  groups = report.plot_groups(rows)
  assert {k: [r["workdir"] for r in v] for k, v in groups.items()} == {
      "td (in) [s]": ["/w/a", "/w/b"], "td (in) [s (ImageNet init)]": ["/w/c"],
      "td (gen)": ["/w/d"]}
