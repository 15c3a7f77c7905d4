"""Where a digit-segmentation model's errors are: finding the strokes, or naming the digit.

  python benchmarks/digit_seg_errors.py workdirs/tt_seg/vfm/model [more model dirs...]

For each finetuned model (a `finetune` stage's `model/` on the `digit_seg` task) on the task's
200 test images, scored on 64 px masks (the logits bilinearly upsampled, as the finetune
stage's `eval.mask_size=64` scores them):
- mIoU and each class's IoU;
- stroke IoU: "some digit" against background, whichever digit;
- naming accuracy: of the pixels that truth and prediction both call a digit, the share
  given the right digit (10% is chance).
A model with a high stroke IoU and naming near chance has learnt where digits are and not
which they are (the 10-labels-per-class VFM of 2026-12-02).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kt_jax.data import digit_segmentation as ds  # noqa: E402


def _is_digit(labels: np.ndarray) -> np.ndarray:
  return (labels > ds.BACKGROUND) & (labels < ds.NUM_CLASSES)


def stroke_iou(pred: np.ndarray, mask: np.ndarray) -> float:
  """IoU of "any digit" against background over the scored (not ignored) pixels."""
  scored = mask != ds.IGNORE
  truth, guess = _is_digit(mask) & scored, _is_digit(pred) & scored
  return float((truth & guess).sum() / max((truth | guess).sum(), 1))


def naming_accuracy(pred: np.ndarray, mask: np.ndarray) -> float:
  """Of the pixels both truth and prediction call a digit, the share with the right digit."""
  both = _is_digit(mask) & _is_digit(pred)
  return float((pred[both] == mask[both]).mean()) if both.any() else float("nan")


def predict(model_dir: str, images: np.ndarray, mask_size: int) -> np.ndarray:
  """Class ids (N, mask_size, mask_size): the finetune stage's own evaluation transforms and
  `Supervised.predict`, which upsamples the logits to the masks."""
  import jax
  from kt_jax import convert
  from kt_jax.data import seg_transforms
  from kt_jax.objectives import supervised
  module, variables = convert.load_pretrained(model_dir)
  spec = convert.input_spec(model_dir)
  transforms = seg_transforms.eval_transforms(spec.image_size, spec.mean, spec.std)[1:]
  batch = []
  for image in images:
    record = {"image": image, "mask": np.zeros(image.shape[:2], np.uint8)}
    for t in transforms:
      record = t.map(record)
    batch.append(record["image"])
  objective = supervised.Supervised(module, spec, ds.CLASS_NAMES, segmentation=True)
  params = {"model": variables["params"]}
  state = {"model": {k: v for k, v in variables.items() if k != "params"}}
  labels = jax.jit(lambda x: objective.predict(params, state, x, (mask_size, mask_size)))
  return np.asarray(labels(np.stack(batch)))


def main(argv=None):
  from kt_jax.eval import segmentation
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("models", nargs="+", help="finetune stages' model/ directories")
  parser.add_argument("--images", type=int, default=200)
  args = parser.parse_args(argv)
  images, masks, _ = ds.make_split("test", args.images, size=64, seed=0)
  print("| model | mIoU | stroke IoU | naming accuracy | background IoU | digit IoUs 0-9 |")
  print("|---|---|---|---|---|---|")
  for model_dir in args.models:
    pred = predict(model_dir, images, masks.shape[1])
    iou = segmentation.iou_per_class(segmentation.confusion_matrix(pred, masks, ds.NUM_CLASSES))
    print(f"| {model_dir} | {100 * np.nanmean(iou):.1f}% | {100 * stroke_iou(pred, masks):.1f}% "
          f"| {100 * naming_accuracy(pred, masks):.1f}% | {100 * iou[0]:.1f}% | "
          + " ".join(f"{100 * v:.0f}" for v in iou[1:]) + " |")


if __name__ == "__main__":
  main()
