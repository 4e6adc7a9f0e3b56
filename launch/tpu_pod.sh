#!/usr/bin/env bash
# A Cloud TPU VM pod slice: copy the code to every worker, install, run one process per host.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/imagenet_hl_resnet18.py gs://bucket/workdir \
#       --config.data_dir=gs://bucket/tfds
# Every host reads its own slice of each global batch (per-process Grain sharding) and
# `--distributed` makes the processes one JAX runtime; only process 0 writes results.
# A preempted spot/preemptible VM is gone with its processes: create it again (or use queued
# resources) and rerun this script; the run resumes from its last checkpoint in WORKDIR.
set -euo pipefail
TPU="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
cd "$(dirname "$0")/.."
tar czf /tmp/hardlabel_jax_src.tgz --exclude=.venv --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/hardlabel_jax_src.tgz "$TPU":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e; mkdir -p ~/hardlabel_jax && tar xzf ~/hardlabel_jax_src.tgz -C ~/hardlabel_jax
  cd ~/hardlabel_jax
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]'
  # Exit 75: a preemption notice (a maintenance event's SIGTERM) was caught and the step saved
  # on every host; where the VM survives, start again from it. Any other status is final.
  while :; do
    .venv/bin/python -m hardlabel_jax.main --distributed --config $CONFIG --workdir $WORKDIR $* \
      && exit 0 || status=\$?
    [ \$status -eq 75 ] || exit \$status
    echo 'launch: preempted and saved; resuming'
  done"
