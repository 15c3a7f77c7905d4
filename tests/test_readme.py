"""The README's commands, as a new user copies them: every `python -m kt_jax.*` command (and
the launchers' kt_jax arguments) parses, its config file loads and every flag and config key
exists; the cheap ones run. Parsing uses absl's `--only_check_args`, which stops after the
flags (the README's placeholder paths, /data/imagenet and the DINOv2 files, are not here)."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from test_configs import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as _f:
  README = _f.read()


def bash_commands(text: str) -> list[list[str]]:
  """Each command of each ```bash block, continuation lines joined, comments dropped."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      if words:
        commands.append(words)
  return commands


def kt_jax_invocations(commands) -> list[tuple[str, list[str]]]:
  """(module, args) of each `python -m kt_jax.X` command and each launcher's kt_jax args;
  commands with `...` placeholders (elided arguments) are left out."""
  found = []
  for words in commands:
    if "..." in words or "<git" in " ".join(words):
      continue
    if words[:2] == ["python", "-m"] and words[2].startswith("kt_jax"):
      found.append((words[2], words[3:]))
    elif words[0] == "launch/local.sh":
      found.append(("kt_jax.main", words[2:]))
    elif "launch/slurm.sh" in words:
      found.append(("kt_jax.main", words[words.index("launch/slurm.sh") + 1:]))
  return found


COMMANDS = bash_commands(README)
INVOCATIONS = kt_jax_invocations(COMMANDS)
ABSL = [(m, a) for m, a in INVOCATIONS if m in ("kt_jax.main", "kt_jax.bench")]


def test_the_readme_shows_commands_of_every_entry_point():
  modules = {m for m, _ in INVOCATIONS}
  assert {"kt_jax.main", "kt_jax.bench", "kt_jax.convert", "kt_jax.data.arrayrecord"} <= modules
  configs = {a.split("=", 1)[1] for _, args in ABSL for a in args if a.startswith("--config=")}
  for name in ("demo", "proteus_tiny", "proteus_vits", "pipeline_tiny"):
    assert f"configs/{name}.py" in configs


def test_first_screen_make_targets_exist():
  with open(os.path.join(ROOT, "Makefile")) as f:
    targets = set(re.findall(r"^([\w-]+):", f.read(), re.M))
  makes = [words[1] for words in COMMANDS if words[0] == "make"]
  assert makes and set(makes) <= targets


@pytest.mark.parametrize("module, args", ABSL, ids=lambda v: " ".join(v)[:70]
                         if isinstance(v, list) else v)
def test_absl_command_parses(module, args):
  for arg in args:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]  # config_flags' `file.py:argument`
      assert os.path.isfile(os.path.join(ROOT, path)), arg
  result = subprocess.run([sys.executable, "-m", module, *args, "--only_check_args"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr


def test_argparse_commands_parse():
  from kt_jax.convert.__main__ import build_parser
  convert = [args for m, args in INVOCATIONS if m == "kt_jax.convert"]
  assert len(convert) >= 4
  for args in convert:
    build_parser().parse_args(args)  # exits on an unknown or missing argument
  help_text = subprocess.run([sys.executable, "-m", "kt_jax.data.arrayrecord", "--help"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
  for module, args in INVOCATIONS:
    if module == "kt_jax.data.arrayrecord":
      for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in help_text, flag


def test_benchmark_cases_exist():
  compare = load(os.path.join(ROOT, "benchmarks", "compare.py"))
  cases = [words[words.index("--case") + 1] for words in COMMANDS
           if words[:2] == ["python", "benchmarks/compare.py"]]
  assert cases and set(cases) <= set(compare.CASES)
  listed = re.search(r"# also: (.*?)\n```", README, re.S).group(1)
  names = re.findall(r"\w+", listed)
  assert len(names) >= 5 and set(names) <= set(compare.CASES), names


def test_convert_import_of_the_shipped_teacher_runs(tmp_path):
  """The cheap README command: import the shipped EfficientNet-Lite0 (here into tmp_path)."""
  from kt_jax.convert import kt_format
  from kt_jax.convert.__main__ import main
  args = next(a for m, a in INVOCATIONS if m == "kt_jax.convert" and "efficientnet_lite0" in a)
  out = tmp_path / args[args.index("--out") + 1]
  args[args.index("--out") + 1] = str(out)
  assert main(args) == 0
  assert kt_format.is_kt_dir(str(out))


def test_dinov2_file_links_follow_the_official_names():
  base = r"https://dl\.fbaipublicfiles\.com/dinov2/"
  urls = re.findall(base + r"(dinov2_\w+)/(dinov2_\w+)_pretrain\.pth", README)
  assert {d for d, _ in urls} == {f"dinov2_vit{s}14" for s in "sblg"}
  assert all(d == f for d, f in urls)


@pytest.mark.slow
def test_pipeline_command_runs_at_a_tiny_step_count(tmp_path):
  args = next(a for m, a in INVOCATIONS if m == "kt_jax.main"
              and "--config=configs/pipeline_tiny.py" in a)
  args = [a for a in args if not a.startswith("--workdir")] + [
      f"--workdir={tmp_path / 'run'}", "--config.stages.proteus.total_steps=2",
      "--config.stages.proteus.batch_size=8", "--config.stages.proteus.image_size=64",
      "--config.stages.proteus.eval.tasks=()", "--config.stages.proteus.data.pool_size=32"]
  result = subprocess.run([sys.executable, "-m", "kt_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "run" / "teacher" / "model.json").exists()
  assert (tmp_path / "run" / "proteus" / "summary.json").exists()
