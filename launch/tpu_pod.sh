#!/usr/bin/env bash
# A Cloud TPU VM pod slice: create it, install, run the main job on every worker, delete it.
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR [main job flags...]
#   launch/tpu_pod.sh kt-v4-32 us-central2-b v4-32 --config=configs/proteus_vits.py \
#       --workdir=gs://bucket/runs/proteus_vits --config.teacher.path=gs://bucket/teachers/vitb14 \
#       --config.data.path=/mnt/imagenet_ar
# jax.distributed detects the pod; the same config runs as on one CPU. Set KEEP=1 to keep the
# VM after the job (e.g. to resume after a preemption by running this script again).
set -euo pipefail
name=${1:?name}; zone=${2:?zone}; accelerator=${3:?accelerator type, e.g. v4-32}; shift 3
version=${TPU_SOFTWARE:-tpu-ubuntu2204-base}
repo=${REPO_URL:?set REPO_URL to a git URL of this repository}
if ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accelerator" \
    --version "$version"
fi
run() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
# tfds: ArrayRecord data; eval: the shipped evaluation tasks (mnist, photos) the configs score
# on; foolbox (--no-deps, as the Makefile does) for the cifar10 task. A missing package is
# one error naming its extra before the teacher loads (kt_jax/data/tasks.py `check`).
run "test -d kt_jax || git clone $repo kt_jax; cd kt_jax && git pull && python3 -m venv .venv \
  && .venv/bin/pip install -q 'jax[tpu]==0.10.2' && .venv/bin/pip install -q -e '.[tfds,eval]' \
  && .venv/bin/pip install -q --no-deps foolbox==3.3.4"
args=$(printf ' %q' "$@")
run "cd kt_jax && .venv/bin/python -m kt_jax.main$args"
if [ "${KEEP:-0}" != 1 ]; then
  gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
fi
