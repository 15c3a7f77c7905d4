#!/usr/bin/env bash
# Multi-node GPUs with SLURM: one task per GPU; jax.distributed detects the cluster itself.
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh \
#       --config=configs/proteus_vits.py --workdir=/shared/runs/proteus_vits \
#       --config.teacher.path=/shared/teachers/dinov2_vitb14 --config.data.path=/shared/imagenet_ar
# The workdir must be on a filesystem every node sees. Rerunning the same sbatch resumes.
#SBATCH --job-name=kt_jax
#SBATCH --output=%x-%j.out
#SBATCH --signal=TERM@120
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# One GPU per process; SIGTERM from --signal makes every process checkpoint and exit cleanly.
srun --kill-on-bad-exit=1 bash -c 'CUDA_VISIBLE_DEVICES=$SLURM_LOCALID exec .venv/bin/python -m kt_jax.main "$@"' _ "$@"
