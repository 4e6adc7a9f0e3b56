#!/usr/bin/env bash
# A Cloud TPU VM pod slice: copy the code to every worker, install, run one process per host.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/imagenet_hl_resnet18.py gs://bucket/workdir \
#       --config.data_dir=gs://bucket/tfds
# Every host reads its own slice of each global batch (per-process Grain sharding) and
# `--distributed` makes the processes one JAX runtime; only process 0 writes results.
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
  .venv/bin/python -m hardlabel_jax.main --distributed --config $CONFIG --workdir $WORKDIR $*"
