"""mIoU from a confusion matrix accumulated over batches, against a NumPy reference."""
import jax.numpy as jnp
import numpy as np

from kt_jax.eval import segmentation


def _numpy_confusion(pred, target, n, ignore):
  conf = np.zeros((n, n), np.int64)
  keep = target != ignore
  np.add.at(conf, (target[keep], pred[keep]), 1)
  return conf


def test_confusion_and_miou_match_numpy():
  r = np.random.RandomState(0)
  n = 4
  target = r.randint(0, n, (3, 8, 8))
  target[0, :3] = 255
  target[target == 3] = 2  # class 3 never occurs in the ground truth ...
  pred = r.randint(0, n - 1, (3, 8, 8))  # ... nor in the prediction: no IoU, left out
  got = np.asarray(segmentation.confusion_matrix(jnp.asarray(pred), jnp.asarray(target), n))
  want = _numpy_confusion(pred, target, n, 255)
  np.testing.assert_array_equal(got, want)
  ious = [want[c, c] / (want[c].sum() + want[:, c].sum() - want[c, c]) for c in range(3)]
  assert segmentation.mean_iou(got) == np.float64(np.mean(ious))
  assert np.isnan(segmentation.iou_per_class(got)[3])


def test_padded_rows_are_not_scored():
  target = np.ones((2, 4, 4), np.int32)
  pred = np.ones((2, 4, 4), np.int32)
  pred[1] = 0
  conf = segmentation.confusion_matrix(jnp.asarray(pred), jnp.asarray(target), 2,
                                       valid=jnp.asarray([True, False]))
  np.testing.assert_array_equal(np.asarray(conf), [[0, 0], [0, 16]])
  assert segmentation.mean_iou(conf) == 1.0
