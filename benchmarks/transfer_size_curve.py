"""The transfer-set-size curve (the task-transfer paper's Figure 5 shape) from a chain's report.

  python benchmarks/transfer_size_curve.py --workdir workdirs/tt_mnist \
      --out benchmarks/task_transfer_mnist_sizes.png

Reads `<workdir>/report.json` (written by every finetune of configs/task_transfer_mnist.py run
with `:sizes=...`): the task-oriented rows on in-domain sets of each size, plus the chain's own
2,000-image in-domain row, against the reference rows (finetuned VFM, ImageNet student,
retrieved set) as horizontal lines.
"""
import argparse
import json
import os
import re

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

TASK_ORIENTED = "task-oriented distillation + finetune"


def _pretrained_student(row: dict) -> bool:
  """The chain's ImageNet-initialised distillation: not a point of the from-scratch curve."""
  return "ImageNet" in row.get("student", "")


def curve(rows: list[dict], default_size: int = 2000) -> list[tuple[int, float]]:
  """(transfer images, test score) of the task-oriented in-domain rows whose student starts
  from the seed, by size."""
  points = {}
  for r in rows:
    if (r["method"] != TASK_ORIENTED or not r["transfer_set"].startswith("in-domain")
        or _pretrained_student(r)):
      continue
    sized = re.search(r"in-domain, (\d+) images", r["transfer_set"])
    points[int(sized.group(1)) if sized else default_size] = r["test"]
  return sorted(points.items())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  with open(os.path.join(args.workdir, "report.json")) as f:
    rows = json.load(f)
  points = curve(rows)
  if not points:
    raise SystemExit(f"{args.workdir}/report.json has no task-oriented in-domain rows.")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([n for n, _ in points], [100 * t for _, t in points], "o-",
          label="task-oriented distillation, in-domain")
  colours = iter(f"C{i}" for i in range(1, 10))
  for r in rows:
    label = {"finetuned VFM": "finetuned VFM (teacher)",
             "ImageNet-pretrained student": "ImageNet student"}.get(r["method"])
    if r["method"] == TASK_ORIENTED and r["transfer_set"].startswith("retrieved"):
      label = "distillation on the retrieved set"
    elif r["method"] == TASK_ORIENTED and _pretrained_student(r):
      label = "distillation into the ImageNet student, in-domain"
    if label:
      ax.axhline(100 * r["test"], ls="--", lw=1, color=next(colours), label=label)
  ax.set_xscale("log")
  ax.set_xticks([n for n, _ in points], [str(n) for n, _ in points])
  ax.minorticks_off()
  ax.set_xlabel("unlabelled transfer images")
  ax.set_ylabel("test top-1 (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  for n, t in points:
    print(f"{n:>6} images: test {100 * t:.1f}%")


if __name__ == "__main__":
  main()
