"""Bad states on the real tiny config: NaN stops the run and keeps the last good checkpoint;
SIGTERM checkpoints and exits cleanly, and the same command resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from kt_jax import stages
from kt_jax.errors import UserError
from kt_jax.train import trainer
from test_trainer import ROOT, losses, tiny_config


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # An absurd learning rate: step 1 is computed from sane weights, after it all is overflow.
  config = tiny_config(**{"optimizer.lr": 1e30, "checkpoint_every_steps": 1, "total_steps": 6})
  with pytest.raises(trainer.NonFiniteLossError, match=r"Non-finite \w+ at step (\d+)") as err:
    stages.run(config, str(tmp_path))
  bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept and max(kept) < bad_step
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(tmp_path / "checkpoints" / str(max(kept)) / "state")
  import jax
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
  assert not (tmp_path / "summary.json").exists()


_RUN = [sys.executable, "-m", "kt_jax.main", "--config=tests/tiny_proteus_config.py"]


def test_sigterm_checkpoints_and_resumes(tmp_path):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  cmd = _RUN + [f"--workdir={tmp_path}", "--config.total_steps=200"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  metrics = tmp_path / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, output[-2000:]
  assert "SIGTERM" in output
  steps = [s for s, _ in losses(tmp_path)]
  kept = max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == steps[-1] < 200
  assert not (tmp_path / "summary.json").exists()
  # The same command resumes from there (stop_after_steps may change: it ends it 2 steps on).
  done = subprocess.run(cmd + ["--config.stop_after_steps=2"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  steps = [s for s, _ in losses(tmp_path)]
  assert steps == list(range(1, kept + 3))
  assert max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == kept + 2


def test_resuming_with_another_model_is_a_clear_error(tmp_path):
  from kt_jax.train import checkpoint
  stages.run(tiny_config(total_steps=4, stop_after_steps=2), str(tmp_path))
  wider = tiny_config(total_steps=4, **{"student.overrides": {"depth": 3}})
  with pytest.raises(UserError, match=r"student\.overrides\.depth: 2 -> 3"):
    stages.run(wider, str(tmp_path))  # the workdir's config.json names the change
  os.remove(tmp_path / "config.json")  # without it (older workdirs) the checkpoint still fails
  with pytest.raises(checkpoint.CheckpointDoesNotFitError, match="does not fit this run's model"):
    stages.run(wider, str(tmp_path))


def _ids(workdir):
  with open(os.path.join(workdir, "sample_ids.jsonl")) as f:
    return [(r["step"], r["ids"]) for r in map(json.loads, f)]


def test_sigkill_at_several_steps_then_resume_is_bit_identical(tmp_path):
  """Killed without warning twice (async checkpoints on), restarted with the same command:
  the same losses, parameters and samples, none repeated or skipped, as a run never killed."""
  flags = ["--config.total_steps=12", "--config.checkpoint_every_steps=2",
           "--config.log_sample_ids=True", "--config.async_checkpoints=True"]
  straight = tiny_config(total_steps=12, checkpoint_every_steps=2, log_sample_ids=True)
  stages.run(straight, str(tmp_path / "straight"))
  workdir = tmp_path / "killed"
  metrics = workdir / "metrics.jsonl"
  for kill_after in (3, 7):
    proc = subprocess.Popen(_RUN + [f"--workdir={workdir}"] + flags, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
        break
      time.sleep(0.05)
    proc.kill()
    proc.wait()
  done = subprocess.run(_RUN + [f"--workdir={workdir}"] + flags, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert losses(tmp_path / "straight") == losses(workdir)
  assert _ids(tmp_path / "straight") == _ids(workdir)
  assert [s for s, _ in _ids(workdir)] == list(range(1, 13))
  import jax
  from test_trainer import final_params
  for x, y in zip(jax.tree.leaves(final_params(tmp_path / "straight", 12)),
                  jax.tree.leaves(final_params(workdir, 12))):
    np.testing.assert_array_equal(x, y)


def _photo_folder(root, bad: bool):
  """Real photos (scikit-image) as JPEG/PNG in two class folders, plus broken files."""
  import skimage.data
  from PIL import Image
  for cls, names in {"animals": ("chelsea", "coffee"), "space": ("astronaut", "rocket")}.items():
    os.makedirs(root / cls, exist_ok=True)
    for name in names:
      image = Image.fromarray(getattr(skimage.data, name)())
      image.save(root / cls / f"{name}.jpg")
      image.convert("L").save(root / cls / f"{name}_grey.png")
  Image.fromarray(np.full((3, 2, 3), 200, np.uint8)).save(root / "space" / "tiny.png")  # 3x2 px
  Image.fromarray(skimage.data.chelsea()).convert("CMYK").save(root / "animals" / "cmyk.jpg")
  if bad:
    (root / "animals" / "zero.jpg").write_bytes(b"")
    (root / "space" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = (root / "animals" / "chelsea.jpg").read_bytes()
    (root / "space" / "truncated.jpg").write_bytes(data[: len(data) // 3])


# tiny_config sizes the shipped pool; with another source those options must be unset.
_NO_POOL = {"data.pool_size": 512, "data.pool_crop_size": 160}


def test_training_on_an_image_folder_with_broken_files(tmp_path):
  _photo_folder(tmp_path / "images", bad=True)
  config = tiny_config(**{"data.source": "image_folder", "data.path": str(tmp_path / "images"),
                          "total_steps": 4, "checkpoint_every_steps": 4, **_NO_POOL})
  summary = stages.run(config, str(tmp_path / "run"))
  assert summary["completed"] and summary["bad_records"] >= 2
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert rows[-1]["bad_records"] >= 2 and all(np.isfinite(r["loss"]) for r in rows)


def test_a_folder_without_one_readable_image_is_an_error(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "images" / "a.jpg").write_bytes(b"garbage")
  (tmp_path / "images" / "b.png").write_bytes(b"")
  config = tiny_config(**{"data.source": "image_folder", "data.path": str(tmp_path / "images"),
                          **_NO_POOL})
  with pytest.raises(ValueError, match="No readable image"):
    stages.run(config, str(tmp_path / "run"))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(UserError, match="not writable"):
    stages.run(tiny_config(), str(blocker / "run"))
