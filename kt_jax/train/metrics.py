"""Where training numbers go: metrics.jsonl, TensorBoard events (no TensorFlow), a progress
bar with loss, img/s and ETA, and a PNG of the loss curves at the end.

The workdir may be a cloud URL (gs://...): files go through `kt_jax.paths`. tensorboardX
cannot write there, so a remote run's events are written to a local temporary folder and
copied to `<workdir>/tensorboard/` when the writer closes.
"""
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter
from tqdm import tqdm

from kt_jax import paths

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
IDS_FILE = "sample_ids.jsonl"


class MetricWriter:
  def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int,
               enabled: bool = True):
    self.workdir, self.enabled, self.batch_size = workdir, enabled, batch_size
    self._tb_dir = paths.join(workdir, "tensorboard")
    self._tb_local = None  # a remote workdir's events, until close() copies them
    if enabled and paths.is_remote(workdir):
      self._tb_local = tempfile.mkdtemp(prefix="kt_jax_tensorboard_")
    self._tb = SummaryWriter(self._tb_local or self._tb_dir) if enabled else None
    self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                     dynamic_ncols=True, disable=not enabled)
    self._last = (time.perf_counter(), start_step)
    for name in (METRICS_FILE, IDS_FILE, EVAL_FILE):
      if enabled and start_step == 0 and paths.exists(paths.join(workdir, name)):
        paths.remove(paths.join(workdir, name))  # a fresh run starts a fresh history

  @property
  def path(self) -> str:
    return paths.join(self.workdir, METRICS_FILE)

  def truncate_after(self, step: int) -> None:
    """On resume, drop lines logged after the checkpoint we resume from (they will recur)."""
    for name in (METRICS_FILE, IDS_FILE, EVAL_FILE):
      path = paths.join(self.workdir, name)
      if not (self.enabled and paths.exists(path)):
        continue
      lines = paths.read_text(path).splitlines(keepends=True)
      rows = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
      paths.write_text(path, "".join(rows))

  def write(self, step: int, metrics: dict) -> None:
    now, (then, last_step) = time.perf_counter(), self._last
    rate = (step - last_step) * self.batch_size / max(now - then, 1e-9)
    self._last = (now, step)
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    paths.append_text(self.path, json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step":
        self._tb.add_scalar(k, v, step)
    self._tb.add_scalar("img_per_sec", rate, step)
    self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4g}", img_s=f"{rate:.1f}")
    self._bar.update(step - self._bar.n)

  def write_ids(self, step: int, ids) -> None:
    """Which samples a step saw (`log_sample_ids`): proves a resume neither repeats nor skips."""
    if self.enabled:
      paths.append_text(paths.join(self.workdir, IDS_FILE),
                        json.dumps({"step": int(step), "ids": [int(i) for i in ids]}) + "\n")

  def write_eval(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    paths.append_text(paths.join(self.workdir, EVAL_FILE),
                      json.dumps({"step": int(step), **metrics}) + "\n")
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self._tb.add_scalar(f"eval/{k}", v, step)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self._tb_local is not None:
        copied = paths.copy_tree_to(self._tb_local, self._tb_dir)
        logging.info("TensorBoard events (%d files) written locally, copied to %s",
                     len(copied), self._tb_dir)
        shutil.rmtree(self._tb_local, ignore_errors=True)
        self._tb_local = None
    self._bar.close()


def read_metrics(workdir: str) -> list[dict]:
  return [json.loads(line) for line in paths.read_text(paths.join(workdir, METRICS_FILE))
          .splitlines() if line.strip()]


def _save_figure(fig, path: str) -> None:
  """`fig.savefig(path)`, through epath for a cloud path (matplotlib writes local files)."""
  if not paths.is_remote(path):
    fig.savefig(path)
    return
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(path)[1].lstrip(".") or "png")
  paths.write_bytes(path, buffer.getvalue())


def plot_loss_curves(workdir: str, out_name: str = "loss_curves.png") -> str:
  """Every *loss* column of metrics.jsonl against step, log-scale, one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_metrics(workdir)
  keys = sorted({k for r in rows for k in r if "loss" in k})
  # Reference levels an objective may log (e.g. the teacher's variance): dashed.
  references = sorted({k for r in rows for k in r if k.endswith("_var")})
  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  for k in keys + references:
    steps = np.array([r["step"] for r in rows if k in r])
    values = np.array([r[k] for r in rows if k in r])
    ax.plot(steps, values, label=k, lw=1.5 if k == "loss" else 1.0,
            ls="--" if k in references else "-")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  if all(r.get(k, 1) > 0 for r in rows for k in keys + references):
    ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = paths.join(workdir, out_name)
  _save_figure(fig, path)
  plt.close(fig)
  return path


def plot_eval_curves(workdir: str, before: dict | None = None, references: dict | None = None,
                     out_name: str = "eval_curves.png") -> str | None:
  """eval.jsonl against step: R^2 columns in one panel, accuracies in the other.

  `before` (scores at step 0, e.g. the random init) starts each curve; `references` (e.g. the
  teacher's scores, keyed like 'teacher/mnist/knn_top1') are drawn as dashed levels in the
  colour of the student curve of the same metric. Returns the PNG's path (None: no evals).
  """
  path = paths.join(workdir, EVAL_FILE)
  if not paths.exists(path):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
  if before:
    rows = [dict(before, step=0)] + rows
  keys = sorted({k for r in rows for k in r if k != "step" and isinstance(r[k], (int, float))})
  panels = [("R^2 of the heads vs the teacher (held-out)", [k for k in keys if k.endswith("_r2")]),
            ("top-1 accuracy", [k for k in keys if not k.endswith("_r2")])]
  panels = [(title, ks) for title, ks in panels if ks]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), dpi=110,
                           squeeze=False)
  for ax, (title, ks) in zip(axes[0], panels):
    for k in ks:
      steps = [r["step"] for r in rows if k in r]
      line, = ax.plot(steps, [r[k] for r in rows if k in r], marker="o", ms=3, label=k)
      level = (references or {}).get("teacher/" + k.split("/", 1)[-1])
      if level is not None:
        ax.axhline(level, ls="--", lw=1, color=line.get_color(), label=f"teacher {k.split('/', 1)[-1]}")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  out = paths.join(workdir, out_name)
  _save_figure(fig, out)
  plt.close(fig)
  return out


def plot_panels(workdir: str, panels: dict, out_name: str, before: dict | None = None,
                latest: dict | None = None) -> str | None:
  """One panel per title in `panels` ({title: [column, ...]}): each column of eval.jsonl
  (held out, with markers) and of metrics.jsonl (train) against the step; `before` (step-0
  scores) starts the eval curves and `latest` (a row with its `step`, not yet in eval.jsonl)
  ends them. Returns the PNG's path (None: nothing to draw yet)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tables = {}
  for name in (EVAL_FILE, METRICS_FILE):
    path = paths.join(workdir, name)
    tables[name] = ([json.loads(line) for line in paths.read_text(path).splitlines()
                     if line.strip()] if paths.exists(path) else [])
  if before:
    tables[EVAL_FILE] = [dict(before, step=0)] + tables[EVAL_FILE]
  if latest:
    tables[EVAL_FILE] = tables[EVAL_FILE] + [latest]
  drawn = False
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=110,
                           squeeze=False)
  for ax, (title, columns) in zip(axes[0], panels.items()):
    for column in columns:
      for name, marker in ((EVAL_FILE, "o"), (METRICS_FILE, None)):
        rows = [r for r in tables[name] if isinstance(r.get(column), (int, float))]
        if rows:
          label = column + (" (held out)" if name == EVAL_FILE else " (train)")
          ax.plot([r["step"] for r in rows], [r[column] for r in rows], marker=marker, ms=3,
                  lw=1.5 if marker else 0.8, label=label)
          drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  out = paths.join(workdir, out_name)
  if drawn:
    _save_figure(fig, out)
  plt.close(fig)
  return out if drawn else None
