"""Joining a multi-process run: one call before anything touches a device.

TPU pod slices and SLURM/Open MPI GPU clusters are detected by `jax.distributed.initialize()`
itself; elsewhere (a local multi-process test, a hand-made cluster) pass the coordinator
address, the number of processes and this process's id. CPU processes talk through gloo.
"""
import os

import jax
from absl import logging

def _cluster_detected() -> bool:
  if os.environ.get("SLURM_NTASKS", "1") != "1" or os.environ.get("OMPI_COMM_WORLD_SIZE",
                                                                  "1") != "1":
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """Initialises jax.distributed when this is one process of several; a no-op otherwise."""
  explicit = bool(coordinator_address) and num_processes > 1
  if not explicit and not _cluster_detected():
    return
  # Collectives between CPU devices of different processes (GPU/TPU ones use their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
