"""benchmarks/digit_seg_errors.py's two error measures against hand-counted masks."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import digit_seg_errors  # noqa: E402


def test_stroke_iou_and_naming_accuracy():
  mask = np.array([[0, 1, 1, 255],
                   [0, 3, 3, 0]])
  pred = np.array([[0, 1, 2, 5],     # stroke found, named 1 (right) and 2 (wrong); ignored
                   [4, 3, 0, 0]])    # a false stroke, 3 right, a missed stroke
  # strokes (flat indices): truth {1, 2, 5, 6}, prediction {1, 2, 4, 5} -> 3 / 5
  assert digit_seg_errors.stroke_iou(pred, mask) == 3 / 5
  # both digit: (0,1) right, (0,2) wrong, (1,1) right -> 2 / 3
  assert digit_seg_errors.naming_accuracy(pred, mask) == 2 / 3
  assert np.isnan(digit_seg_errors.naming_accuracy(np.zeros_like(mask), mask))
