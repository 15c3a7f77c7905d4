"""Two processes on localhost (CPU collectives over gloo) train the tiny Proteus config and
reach the same losses and parameters as one process with the same global batch and seed."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from test_trainer import ROOT, losses

_CMD = [sys.executable, "-m", "kt_jax.main", "--config=tests/tiny_proteus_config.py",
        "--config.total_steps=4", "--config.checkpoint_every_steps=4",
        # Evaluation runs across the processes too: kNN / probe on a small photo task.
        "--config.eval.tasks=('photos',)", "--config.eval.before_training=False",
        "--config.eval.task_options.photos.crops_per_photo=4",
        "--config.eval.task_options.photos.crop_size=64"]

_DUMP = r"""
import sys, jax, numpy as np, orbax.checkpoint as ocp
with ocp.StandardCheckpointer() as c:
  meta = c.metadata(sys.argv[1])
  meta = getattr(meta, "item_metadata", meta)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), meta)
  state = c.restore(sys.argv[1], target)
flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
np.savez(sys.argv[2], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _params(workdir, out):
  subprocess.run([sys.executable, "-c", _DUMP, str(workdir / "checkpoints" / "4" / "state"),
                  str(out)], check=True, cwd=ROOT, capture_output=True, text=True)
  return np.load(out)


@pytest.mark.slow  # two launches of a real run: minutes on 2 cores (make test-slow)
def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  one = subprocess.run(_CMD + [f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  # launch/local.sh starts the processes, as a user would.
  two = subprocess.run(["bash", "launch/local.sh", "2"] + _CMD[3:] + [
      f"--workdir={tmp_path / 'two'}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(env, PYTHON=sys.executable, KT_JAX_PORT=str(_free_port())))
  assert two.returncode == 0, two.stderr[-3000:]
  assert "Process 1 of 2" in two.stderr and "Process 0 of 2" in two.stderr
  for (s1, l1), (s2, l2) in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
    assert s1 == s2
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
  evals = [json.loads((tmp_path / run / "eval.jsonl").read_text().splitlines()[-1])
           for run in ("one", "two")]
  assert evals[0].keys() == evals[1].keys() and "student/photos/knn_top1" in evals[0]
  for key in evals[0]:
    assert abs(evals[0][key] - evals[1][key]) <= 0.05, key  # float ties may flip a neighbour
  a, b = _params(tmp_path / "one", tmp_path / "a.npz"), _params(tmp_path / "two", tmp_path / "b.npz")
  assert len(a.files) == len(b.files) > 10
  for key in a.files:
    x, y = a[key], b[key]
    if "qkv" in key and "bias" in key:  # zero-gradient key bias: see test_trainer
      w = x.shape[-1] // 3
      x, y = np.delete(x, np.s_[w:2 * w], -1), np.delete(y, np.s_[w:2 * w], -1)
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=key)
  # model/, written by both processes together at the end, holds the final student.
  import jax
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckpt:
    model = ckpt.restore(str(tmp_path / "two" / "model" / "variables"))
  flat = jax.tree_util.tree_flatten_with_path(model["params"])[0]
  assert len(flat) == len([k for k in b.files if k.startswith("['student']")])
  for path, x in flat:
    np.testing.assert_array_equal(x, b["['student']" + jax.tree_util.keystr(path)])
