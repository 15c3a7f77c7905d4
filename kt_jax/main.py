"""Entry point: `python -m kt_jax.main --config=configs/<name>.py --workdir=<dir>`.

Flags and process setup only; the config's `stage` names the importable function that runs.
Override any config field on the command line, e.g. `--config.batch_size=64`; a key the
config does not have is an error before anything is computed. User errors (a bad flag, value,
path or checkpoint) print one line and exit with status 2; `--debug` or `KT_JAX_DEBUG=1`
shows their traceback.
"""
import logging as std_logging
import os
import shutil

from absl import flags, logging
from ml_collections import config_flags

from kt_jax import cli, stages
from kt_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for multi-process runs that jax "
    "cannot detect (TPU pods and SLURM are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Keeps INFO lines from orbax/grain internals out of the console; warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax"))


def check_workdir(workdir: str) -> None:
  """A workdir must be a directory or not exist yet (then the run creates it)."""
  if "://" in workdir and not workdir.startswith("file://"):
    return  # a cloud path: checked when it is written
  local = workdir.removeprefix("file://")
  if os.path.exists(local) and not os.path.isdir(local):
    raise UserError(f"--workdir={workdir} is a file, not a directory. Pass another --workdir.")


def _remove_if_left_empty(workdir: str) -> None:
  """A run that failed on a user error leaves no new workdir behind (config.json aside)."""
  if os.path.isdir(workdir) and set(os.listdir(workdir)) <= {"config.json"}:
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv):
  del argv  # cli.parse_flags has rejected stray arguments
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  workdir = _WORKDIR.value
  check_workdir(workdir)
  is_new = "://" not in workdir and not os.path.exists(workdir)
  from kt_jax import distributed  # jax: not imported to parse flags (--only_check_args)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    stages.run(_CONFIG.value, workdir)
  except UserError:
    if is_new:
      _remove_if_left_empty(workdir)
    raise


if __name__ == "__main__":
  cli.run(main, prog="kt_jax.main")
