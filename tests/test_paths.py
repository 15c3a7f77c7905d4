"""User paths: local, file:// and cloud URLs (gs://...) through kt_jax.paths / etils.epath.

No test touches the network: cloud URLs are checked as strings, and the remote code paths are
run against a local folder by mapping `gs://bucket` onto it inside `paths.as_path`.
"""
import os

import numpy as np
import pytest
from etils import epath
from PIL import Image

from kt_jax import convert, paths, stages
from kt_jax.convert import kt_format
from kt_jax.data import sources


def test_cloud_urls_stay_urls_and_file_urls_become_local(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("gs://bucket/x") == "gs://bucket/x"
  assert paths.absolute("s3://bucket/x/") == "s3://bucket/x/"
  assert paths.absolute("file:///tmp/run") == "/tmp/run"
  assert paths.absolute("runs/a") == os.path.join(str(tmp_path), "runs", "a")
  assert os.path.abspath("gs://bucket/x") != "gs://bucket/x"  # what the old code did
  assert paths.join("gs://bucket/x", "checkpoints") == "gs://bucket/x/checkpoints"
  assert paths.is_remote("gs://bucket/x") and not paths.is_remote("file:///x")
  assert not paths.is_remote("/x") and not paths.is_remote("efficientnet_lite0")
  assert isinstance(paths.as_path("gs://bucket/x"), epath.Path)
  assert str(paths.as_path("gs://bucket/x") / "y") == "gs://bucket/x/y"


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """`gs://bucket/...` served from a local folder: the remote branches run, offline."""
  root = tmp_path / "bucket"
  root.mkdir()
  seen = []

  def as_path(path):
    path = paths.normalise(str(path))
    seen.append(path)
    return epath.Path(path.replace("gs://bucket", str(root), 1))
  monkeypatch.setattr(paths, "as_path", as_path)
  return root, seen


def test_gs_workdir_is_created_through_epath_not_abspath(fake_bucket):
  root, seen = fake_bucket
  assert stages.prepare_workdir("gs://bucket/runs/a") == "gs://bucket/runs/a"
  assert (root / "runs" / "a").is_dir()
  assert "gs://bucket/runs/a" in seen
  assert not os.path.exists(os.path.join(os.getcwd(), "gs:"))


def _save_tiny_teacher(directory):
  module, variables = convert.load_pretrained("random:vit_tiny_patch14")
  kt_format.save(str(directory), module, variables,
                 extra={"input_spec": {"image_size": 56, "mean": [0.5] * 3, "std": [0.25] * 3}})
  return module, variables


def _same_variables(a, b):
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_teacher_from_gs_and_file_urls(tmp_path, fake_bucket):
  root, _ = fake_bucket
  module, variables = _save_tiny_teacher(root / "teacher")
  for path in ("gs://bucket/teacher", f"file://{root}/teacher", str(root / "teacher")):
    loaded_module, loaded = convert.load_pretrained(path)
    assert type(loaded_module) is type(module)
    _same_variables(variables, loaded)
    assert convert.input_spec(path).image_size == 56
  with pytest.raises(FileNotFoundError, match="gs://bucket/nope"):
    convert.load_pretrained("gs://bucket/nope")


def test_image_folder_from_gs_url(fake_bucket):
  root, _ = fake_bucket
  for label in ("cat", "dog"):
    (root / "data" / label).mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "data" / label / "0.png")
  source = sources.ImageFolderSource("gs://bucket/data")
  assert source.class_names == ("cat", "dog") and len(source) == 2
  assert source.paths[0] == "gs://bucket/data/cat/0.png"
  record = source[1]
  assert record["label"] == 1 and record["image"][:4] == b"\x89PNG"


def test_append_remove_and_write_on_gs_match_local(tmp_path, fake_bucket):
  root, seen = fake_bucket
  local = str(tmp_path / "local.jsonl")
  for path in (local, "gs://bucket/logs/remote.jsonl"):
    paths.as_path(path).parent.mkdir(parents=True, exist_ok=True)
    paths.append_text(path, "a\n")
    paths.append_text(path, "b\n")
    assert paths.read_text(path) == "a\nb\n"
    paths.write_bytes(path, b"c\n")
    paths.append_text(path, "d\n")
    assert paths.read_text(path) == "c\nd\n"
    paths.remove(path)
    assert not paths.exists(path)
  assert "gs://bucket/logs/remote.jsonl" in seen
  assert not (root / "logs" / "remote.jsonl").exists()
  (tmp_path / "events" / "sub").mkdir(parents=True)
  (tmp_path / "events" / "sub" / "e.1").write_bytes(b"xyz")
  copied = paths.copy_tree_to(str(tmp_path / "events"), "gs://bucket/run/tensorboard")
  assert copied == ["gs://bucket/run/tensorboard/sub/e.1"]
  assert (root / "run" / "tensorboard" / "sub" / "e.1").read_bytes() == b"xyz"


@pytest.mark.slow  # a real (tiny) training run: ~60 s on the 2-core CPU
def test_tiny_job_with_gs_workdir_writes_everything_to_the_bucket(tmp_path, fake_bucket,
                                                                   monkeypatch):
  """A --workdir=gs://bucket/run training run, end to end, against the fake bucket: every file
  (logs, plots, TensorBoard, orbax checkpoints, the model) lands there; a rerun is skipped."""
  import json
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  from test_trainer import tiny_config
  root, seen = fake_bucket
  monkeypatch.chdir(tmp_path)
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  summary = stages.run(config, "gs://bucket/run")
  assert summary["completed"]
  run = root / "run"
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert json.loads((run / "config.json").read_text())["stage"] == "proteus"
  assert json.loads((run / "summary.json").read_text())["completed"]
  assert (run / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert (run / "checkpoints" / "2" / "state").is_dir()
  assert (run / "model" / "model.json").is_file()
  assert convert.load_pretrained("gs://bucket/run/model")[1]
  for name in ("config.json", "summary.json", "metrics.jsonl", "loss_curves.png", "model",
               "checkpoints"):
    assert f"gs://bucket/run/{name}" in seen, name  # written through paths, not open()
  assert not os.path.exists(tmp_path / "gs:")  # no URL mangled into a local folder

  from kt_jax.stages import proteus

  def must_not_train(*_):
    raise AssertionError("a finished run was trained again")
  monkeypatch.setattr(proteus, "run", must_not_train)
  assert stages.run(config, "gs://bucket/run") == json.loads((run / "summary.json").read_text())


@pytest.mark.slow  # a real (tiny) training run: ~60 s on the 2-core CPU
def test_tiny_job_with_file_url_workdir_and_teacher(tmp_path):
  """The tiny Proteus run with --workdir=file://... and teacher.path=file://..."""
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  from test_trainer import tiny_config
  teacher_dir = tmp_path / "teacher"
  module, variables = convert.load_pretrained("efficientnet_lite0")
  kt_format.save(str(teacher_dir), module, variables,
                 extra=kt_format.import_extras("efficientnet_lite0"))
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  config.teacher.path = f"file://{teacher_dir}"
  summary = stages.run(config, f"file://{tmp_path}/run")
  assert summary["completed"]
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")
  assert not os.path.exists(os.path.join(os.getcwd(), "file:"))


_VITL_SHARDING = r"""
import os, sys, importlib.util
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from kt_jax import sharding
from kt_jax.stages import proteus
from kt_jax.train import trainer
spec = importlib.util.spec_from_file_location("vitl", "configs/proteus_vitl.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
c = module.get_config()  # no mesh override: the config's own default
c.student.overrides = {"depth": 1, "pos_interp_offset": 0.1}
c.teacher.path = "random:vit_small_patch14_dinov2"
c.image_size, c.batch_size, c.total_steps = 28, 8, 1
objective = proteus.build_objective(c)
sample = {"image": np.zeros((1, 28, 28, 3), np.float32)}
setup = trainer.build(c, objective, sample, trainer.resolve_schedule(c, 1))
state = setup.init(jax.random.key(0))
print("mesh", dict(setup.mesh.shape))
for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
  name = jax.tree_util.keystr(path)
  if leaf.size >= 2**14:
    assert "fsdp" in str(leaf.sharding.spec), (name, leaf.shape, leaf.sharding.spec)
    assert leaf.addressable_shards[0].data.size * 8 == leaf.size, name
    print("sharded", name, leaf.shape, leaf.sharding.spec)
for leaf in jax.tree.leaves(setup.frozen):
  if leaf.size >= 2**14:
    assert "fsdp" in str(leaf.sharding.spec), leaf.shape
print("ok")
"""


@pytest.mark.slow  # ~4 min on the shared 2-core CPU (builds ViT-L-width state)
def test_vitl_config_shards_big_leaves_on_eight_devices():
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _VITL_SHARDING], cwd=root, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=root))
  assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
  assert "mesh {'data': 1, 'fsdp': 8}" in out.stdout
