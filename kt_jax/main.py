"""Entry point: `python -m kt_jax.main --config=configs/<name>.py --workdir=<dir>`.

Flags and process setup only; the config's `stage` names the importable function that runs.
Override any config field on the command line, e.g. `--config.batch_size=64`; a key the
config does not have is an error before anything is computed.
"""
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from kt_jax import distributed, stages

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  stages.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
