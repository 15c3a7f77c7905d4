"""The report of task-oriented transfer: one row per evaluated model, in `<dir>/report.json`,
`<dir>/report.md` and a plot of accuracy against pretraining compute (`report_compute.png`,
the paper's Figure 4).

A row is a flat dict. `append_row(report_dir, row)` is the whole API for writers (the
`finetune` stage, and any stage that evaluates a task model); the keys it knows:

  method            what produced the model ("finetuned VFM", "scratch", "task distill", ...)
  teacher, student  model names or paths ("" when there is none)
  transfer_set      the unlabelled images a distillation used ("" when none)
  task, labels_per_class, metric ("top1" or "miou"), val, test (fractions in [0, 1])
  student_params    parameter count of the evaluated model
  student_flops     its forward FLOPs per image (XLA's cost analysis)
  pretrain_images   images seen by the stage that made the backbone (0: none, e.g. scratch;
                    None: unknown, e.g. ImageNet weights from elsewhere)
  pretrain_flops    that stage's train-step FLOPs x steps (XLA's cost analysis, teacher
                    forward included)
  finetune_images, finetune_flops   the same for the finetuning itself
  workdir           the run that wrote the row; a later row from the same workdir replaces it

Pretraining compute comes from the training workdir the backbone was written by: every
training stage leaves `train_cost.json` (FLOPs per step) beside its checkpoints, and a model
directory's `model.json` names its `source` workdir and `step` (`pretraining_compute`).
"""
import json
import time

import numpy as np

from kt_jax import paths

JSON_FILE = "report.json"
MD_FILE = "report.md"
PLOT_FILE = "report_compute.png"
COST_FILE = "train_cost.json"  # written by kt_jax.train.trainer

COLUMNS = ("method", "teacher", "student", "transfer_set", "task", "labels_per_class", "metric",
           "val", "test", "student_params", "student_flops", "pretrain_images",
           "pretrain_flops", "finetune_images", "finetune_flops")
REQUIRED = ("method", "metric", "test")
FD_METRIC = "fd"   # a domain-gap row: `test` holds the Frechet distance (stages/domain_gap.py)
FD_COLUMNS = ("reference", "transfer_set", "teacher", "test")


def read_rows(report_dir: str) -> list[dict]:
  path = paths.join(report_dir, JSON_FILE)
  return json.loads(paths.read_text(path)) if paths.exists(path) else []


def append_row(report_dir: str, row: dict) -> list[dict]:
  """Adds `row` (replacing an earlier row of the same `workdir`) and rewrites the JSON, the
  Markdown table and the compute plot. Returns every row."""
  missing = [k for k in REQUIRED if k not in row]
  if missing:
    raise ValueError(f"A report row needs {', '.join(missing)}; got {sorted(row)}.")
  row = dict(row, date=row.get("date") or time.strftime("%Y-%m-%d %H:%M"))
  rows = [r for r in read_rows(report_dir)
          if not (row.get("workdir") and r.get("workdir") == row.get("workdir"))]
  rows.append(row)
  paths.as_path(report_dir).mkdir(parents=True, exist_ok=True)
  paths.write_text(paths.join(report_dir, JSON_FILE), json.dumps(rows, indent=1))
  paths.write_text(paths.join(report_dir, MD_FILE), markdown(rows))
  plot(rows, paths.join(report_dir, PLOT_FILE))
  return rows


def _cell(key: str, value) -> str:
  if value is None or value == "":
    return "-"
  if key in ("val", "test") and isinstance(value, (int, float)):
    return f"{100 * value:.1f}%"
  if key.endswith("_flops") and isinstance(value, (int, float)):
    return f"{value:.3g}"
  if key.endswith(("_params", "_images")) and isinstance(value, (int, float)):
    return f"{int(value):,}"
  return str(value)


def _table(rows: list[dict], columns, cell=_cell, names=None) -> str:
  header = "| " + " | ".join(names or columns) + " |\n|" + "---|" * len(columns) + "\n"
  return header + "".join(
      "| " + " | ".join(cell(k, r.get(k)) for k in columns) + " |\n" for r in rows)


def _fd_cell(key: str, value) -> str:
  return f"{value:.4g}" if key == "test" and isinstance(value, (int, float)) else _cell(key, value)


def markdown(rows: list[dict]) -> str:
  """The models' table; domain-gap rows (metric "fd", from the `domain_gap` stage) follow in
  a table of their own, FD in the `test` column."""
  models = [r for r in rows if r.get("metric") != FD_METRIC]
  gaps = [r for r in rows if r.get("metric") == FD_METRIC]
  text = _table(models, COLUMNS)
  if gaps:
    text += ("\nDomain gap: Frechet distance to the reference images in the model's features "
             "(lower: closer; sizes in parentheses)\n\n")
    text += _table(gaps, FD_COLUMNS, _fd_cell, ("reference", "set", "model", "FD"))
  return text


def plot_groups(rows: list[dict]) -> dict[str, list[dict]]:
  """The plot's lines: legend label -> rows, one per (method, transfer set), split by student
  (named in the label) where one method and transfer set have several."""
  def base(r):
    return r["method"] + (f" ({r['transfer_set']})" if r.get("transfer_set") else "")
  students: dict[str, set] = {}
  for r in rows:
    students.setdefault(base(r), set()).add(r.get("student", ""))
  groups: dict[str, list[dict]] = {}
  for r in rows:
    label = base(r)
    if len(students[label]) > 1:
      label += f" [{r.get('student', '')}]"
    groups.setdefault(label, []).append(r)
  return groups


def plot(rows: list[dict], out_path: str) -> str | None:
  """Test metric against pretraining FLOPs, one line per (method, transfer set, student: named
  in the legend where one method and transfer set have several); models without pretraining
  compute (scratch: 0, or unknown) are drawn as horizontal lines."""
  scored = [r for r in rows if isinstance(r.get("test"), (int, float))
            and r.get("metric") != FD_METRIC]
  if not scored:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = plot_groups(scored)
  # The legend gets its own rows under the axes: long labels never cover a point.
  flat_rows = sum(1 for r in scored if not (r.get("pretrain_flops") or 0) > 0)
  curves = sum(1 for g in groups.values() if any((r.get("pretrain_flops") or 0) > 0 for r in g))
  legend_h = 0.17 * (flat_rows + curves) + 0.2
  fig, (ax, legend_ax) = plt.subplots(2, 1, figsize=(8, 4.5 + legend_h),
                                      height_ratios=(4.5, legend_h))
  flops = [r["pretrain_flops"] for r in scored if (r.get("pretrain_flops") or 0) > 0]
  for i, (label, members) in enumerate(sorted(groups.items())):
    colour = f"C{i % 10}"
    points = sorted((r["pretrain_flops"], r["test"]) for r in members
                    if (r.get("pretrain_flops") or 0) > 0)
    flat = [r["test"] for r in members if not (r.get("pretrain_flops") or 0) > 0]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, [100 * y for y in ys], "o-", color=colour, label=label)
    for y in flat:
      ax.axhline(100 * y, color=colour, linestyle="--", label=label + " (no pretraining count)")
  if flops and max(flops) > 10 * min(flops):  # a log axis only where it spans decades
    ax.set_xscale("log")
  elif flops:
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
  ax.set_xlabel("pretraining compute (FLOPs, XLA cost analysis)")
  metric = scored[-1].get("metric", "top1")
  ax.set_ylabel(f"test {'mIoU' if metric == 'miou' else 'top-1'} (%)")
  ax.grid(alpha=0.3)
  legend_ax.axis("off")
  legend_ax.legend(*ax.get_legend_handles_labels(), loc="upper left", fontsize=7, frameon=False)
  fig.tight_layout()
  from kt_jax.train import metrics
  fig.set_dpi(110)
  metrics._save_figure(fig, out_path)  # pylint: disable=protected-access
  plt.close(fig)
  return out_path


def stage_compute(workdir: str, step: int | None = None) -> dict | None:
  """{"images", "flops", "steps", "workdir"} of a training workdir up to `step` (default: its
  finished or latest step), plus the compute of the model it started from (`started_from` in
  its `train_cost.json`; images and flops None when that is unknown, e.g. shipped ImageNet
  weights); None when it has no `train_cost.json`."""
  cost_path = paths.join(workdir, COST_FILE)
  if not paths.exists(cost_path):
    return None
  cost = json.loads(paths.read_text(cost_path))
  if step is None:
    step = _finished_step(workdir)
  if step is None:
    return None
  own = {"images": int(step * cost["batch_size"]),
         "flops": float(step * cost["flops_per_step"]), "steps": int(step), "workdir": workdir}
  if cost.get("started_from"):
    before = pretraining_compute(cost["started_from"])
    if before["flops"] is None:
      return {**own, "images": None, "flops": None}
    own["images"] += before["images"]
    own["flops"] += before["flops"]
  return own


def _finished_step(workdir: str) -> int | None:
  from kt_jax.train import model_out
  spec_path = paths.join(workdir, model_out.MODEL_DIR, "model.json")
  if paths.exists(spec_path):
    return json.loads(paths.read_text(spec_path)).get("step")
  from kt_jax.train import checkpoint
  steps = checkpoint.saved_steps(workdir)
  return steps[-1] if steps else None


def pretraining_compute(model_path: str) -> dict:
  """The compute that produced the model at `model_path`: its `model.json` names the training
  workdir (`source`) and step; {"images": 0, "flops": 0} for random weights, None values
  when unknown (a shipped or imported checkpoint trained elsewhere)."""
  if not model_path or str(model_path).startswith("random:"):
    return {"images": 0, "flops": 0.0}
  spec_path = paths.join(str(model_path), "model.json")
  if paths.exists(spec_path):
    spec = json.loads(paths.read_text(spec_path))
    source, step = spec.get("source"), spec.get("step")
    if source and step is not None and paths.exists(paths.join(source, COST_FILE)):
      found = stage_compute(source, int(step))
      if found:
        return found
  return {"images": None, "flops": None}


def params_count(variables) -> int:
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables.get("params", variables))))


def forward_flops(module, variables, image_size: int) -> float:
  """Forward FLOPs per image of `module` at `image_size` (XLA's cost analysis of batch 1)."""
  import jax
  import jax.numpy as jnp
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  compiled = jax.jit(lambda v, x: module.apply(v, x)["logits"]).lower(shapes, image).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0
