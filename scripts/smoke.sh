#!/usr/bin/env bash
# The smoke job: set-up, build, start two `kka-worker run` processes, send no-op tasks through
# RabbitMQ with `kka-coordinator smoke`, then stop the workers with SIGTERM.
#
# Usage: scripts/smoke.sh [--tasks N] [--config FILE]
# Environment variables KKA__SECTION__KEY override the config as usual. Worker logs go to
# runs/smoke/worker-{1,2}.log.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tasks=100
config_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tasks) tasks="$2"; shift 2 ;;
        --config) config_args=(--config "$2"); shift 2 ;;
        *) echo "smoke: unknown argument $1; use --tasks N or --config FILE" >&2; exit 2 ;;
    esac
done

log() { printf 'smoke: %s\n' "$*" >&2; }

bash scripts/setup.sh
source scripts/env.sh
log "building kka-worker and kka-coordinator"
cargo build --quiet -p kka-worker -p kka-coordinator --bins

log_dir="$root/runs/smoke"
mkdir -p "$log_dir"
worker_pids=()

stop_workers() {
    local pid
    for pid in "${worker_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Each worker finishes its tasks in progress within worker.shutdown_grace_secs.
    for pid in "${worker_pids[@]}"; do
        wait "$pid" 2>/dev/null || log "worker $pid exited with status $?; see $log_dir"
    done
    worker_pids=()
}
trap stop_workers EXIT
trap 'exit 130' INT TERM

for n in 1 2; do
    target/debug/kka-worker run "${config_args[@]}" --id "smoke-w$n" >"$log_dir/worker-$n.log" 2>&1 &
    worker_pids+=("$!")
done
log "started workers ${worker_pids[*]}; logs in $log_dir"

target/debug/kka-coordinator smoke "${config_args[@]}" --tasks "$tasks" --wait-workers 2 --timeout-secs 120
