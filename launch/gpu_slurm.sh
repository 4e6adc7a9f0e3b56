#!/usr/bin/env bash
# A SLURM GPU cluster: one process per GPU (srun), coordinated by jax.distributed.
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/gpu_slurm.sh \
#       configs/imagenet_hl_resnet18.py /shared/workdir --config.data_dir=/shared/tfds
# Install once on the shared filesystem: python -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#SBATCH --job-name=hardlabel_jax
#SBATCH --cpus-per-task=8
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# jax.distributed.initialize() reads SLURM's variables (nodes, task id) to find the coordinator.
srun --kill-on-bad-exit=1 .venv/bin/python -m hardlabel_jax.main --distributed \
    --config "$CONFIG" --workdir "$WORKDIR" "$@"
