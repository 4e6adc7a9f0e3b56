#!/usr/bin/env bash
# A SLURM GPU cluster: one process per GPU (srun), coordinated by jax.distributed.
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/gpu_slurm.sh \
#       configs/imagenet_hl_resnet18.py /shared/workdir --config.data_dir=/shared/tfds
# Install once on the shared filesystem: python -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#
# Preemption: SLURM sends USR1 to every task 120 s before the time limit (--signal), and SIGTERM
# when the job is preempted or cancelled. The run saves the step it is on (JAX's preemption sync
# manager makes every process pick the same one), exits 75 (hardlabel_jax.preemption), and this
# script requeues the job, which resumes from that checkpoint. Any other exit status is final.
#SBATCH --job-name=hardlabel_jax
#SBATCH --cpus-per-task=8
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -uo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PREEMPTED=75
# jax.distributed.initialize() reads SLURM's variables (nodes, task id) to find the coordinator.
srun --kill-on-bad-exit=1 .venv/bin/python -m hardlabel_jax.main --distributed \
    --config "$CONFIG" --workdir "$WORKDIR" "$@" &
RUN=$!
# srun passes these on to the tasks; the trap only keeps this script alive to requeue. (A trapped
# signal interrupts `wait`, so wait again until srun itself has ended.)
trap 'kill -TERM "$RUN" 2>/dev/null' TERM
trap 'kill -USR1 "$RUN" 2>/dev/null' USR1
while :; do
  wait "$RUN"; STATUS=$?
  kill -0 "$RUN" 2>/dev/null || break
done
if [ "$STATUS" -eq "$PREEMPTED" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "launch: the run saved and stopped on preemption; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$STATUS"
