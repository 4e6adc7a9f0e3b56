#!/usr/bin/env bash
# One host, all its accelerators (or the CPU):
#   launch/local.sh configs/embedded_hl.py /tmp/embedded_hl [--config.field=value ...]
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "$(dirname "$0")/.."
exec python -m hardlabel_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
