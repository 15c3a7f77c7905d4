#!/usr/bin/env bash
# N processes of the main job on this machine, as if on N hosts (CPU collectives over gloo):
#   launch/local.sh 2 --config=configs/proteus_tiny.py --workdir=workdirs/local2
# Each process reads its own shard of the data; process 0 writes metrics and checkpoints.
set -euo pipefail
n=${1:?usage: launch/local.sh NUM_PROCESSES --config=... --workdir=... [--config.x=...]}
shift
port=${KT_JAX_PORT:-$((20000 + RANDOM % 20000))}
python=${PYTHON:-.venv/bin/python}
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=1" \
    "$python" -m kt_jax.main "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
