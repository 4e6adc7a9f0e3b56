#!/usr/bin/env bash
# One host, all its accelerators (or the CPU), one process:
#   launch/local.sh configs/embedded_hl.py /tmp/embedded_hl [--config.field=value ...]
# Several processes on this one machine, as on a pod (each owns DEVICES_PER_PROCESS simulated CPU
# devices; the coordinator is 127.0.0.1): the multi-host code path without a cluster.
#   PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh configs/embedded_hl.py /tmp/two_processes
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
PROCESSES="${PROCESSES:-1}"
if [ "$PROCESSES" -eq 1 ]; then
  exec "$PYTHON" -m hardlabel_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
fi
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}"
PIDS=()
for ((i = 0; i < PROCESSES; i++)); do
  # Process 0 prints progress; the others log to WORKDIR.process_<i>.log.
  if [ "$i" -eq 0 ]; then OUT=/dev/stdout; else OUT="$WORKDIR.process_$i.log"; fi
  "$PYTHON" -m hardlabel_jax.main --config "$CONFIG" --workdir "$WORKDIR" --distributed \
      --coordinator_address "127.0.0.1:$PORT" --num_processes "$PROCESSES" --process_id "$i" \
      "$@" > "$OUT" 2>&1 &
  PIDS+=($!)
done
# SIGTERM/USR1 to this script reach every process, as a scheduler's would (each exits 75 once its
# preemption save is done).
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null' TERM
trap 'kill -USR1 "${PIDS[@]}" 2>/dev/null' USR1
STATUS=0
for pid in "${PIDS[@]}"; do
  # A trapped signal interrupts `wait`: wait again until the process has ended.
  while :; do
    wait "$pid"; CODE=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  [ "$CODE" -eq 0 ] || STATUS=$CODE
done
exit "$STATUS"
