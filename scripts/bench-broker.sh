#!/usr/bin/env bash
# Broker benchmark: the same no-op workload through kka and through Celery 5, on the same
# RabbitMQ and Redis, in one run. Prints both results and kka's ratio to Celery.
#
#   kka:    `kka-coordinator bench` (release build) with 2 `kka-worker run` processes.
#   Celery: one worker with 2 prefork processes, acks_late, persistent messages on a durable
#           queue, results in Redis; measured with and without publisher confirms.
#
# Usage: scripts/bench-broker.sh [--tasks N] [--latency-tasks N]
# Results are also written as JSON to bench-out/broker-<unix time>.json.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tasks=20000
latency_tasks=2000
while [ $# -gt 0 ]; do
    case "$1" in
        --tasks) tasks="$2"; shift 2 ;;
        --latency-tasks) latency_tasks="$2"; shift 2 ;;
        *) echo "bench-broker: unknown argument $1; use --tasks N or --latency-tasks N" >&2; exit 2 ;;
    esac
done

log() { printf 'bench-broker: %s\n' "$*" >&2; }

bash scripts/setup.sh
source scripts/env.sh
log "building the release binaries (several minutes the first time)"
cargo build --release --quiet -p kka-worker -p kka-coordinator
log "installing Celery 5 and redis-py into .venv"
.venv/bin/pip install --quiet --disable-pip-version-check "celery>=5,<6" "redis>=4"

out_dir="$root/bench-out"
mkdir -p "$out_dir"
stamp="$(date +%s)"

# Other jobs on the machine change every figure here, so the load is recorded with them.
load_at_start="$(cut -d' ' -f1-3 /proc/loadavg)"
log "load average at start: $load_at_start"
log "kka: $tasks tasks at once, then $latency_tasks one at a time"
kka_json="$(target/release/kka-coordinator bench --tasks "$tasks" --latency-tasks "$latency_tasks" --json)"

# The Celery worker runs in bench/celery with its own queue and Redis database.
export KKA_CELERY_QUEUE="kka-celery-bench-$stamp"
export KKA_CELERY_BACKEND="${KKA_CELERY_BACKEND:-redis://127.0.0.1:6379/1}"
celery_pid=""
stop_celery() {
    if [ -n "$celery_pid" ]; then
        kill -TERM "$celery_pid" 2>/dev/null || true
        wait "$celery_pid" 2>/dev/null || true
        celery_pid=""
    fi
}
clean_up() {
    stop_celery
    (cd bench/celery && "$root/.venv/bin/python" cleanup.py) || log "Celery clean-up failed"
}
trap clean_up EXIT

run_celery() {
    local confirm="$1"
    export KKA_CELERY_CONFIRM_PUBLISH="$confirm"
    (cd bench/celery && exec "$root/.venv/bin/celery" -A tasks worker --pool prefork --concurrency 2 \
        --loglevel WARNING --without-gossip --without-mingle --without-heartbeat) \
        >"$out_dir/celery-worker-$stamp.log" 2>&1 &
    celery_pid="$!"
    (cd bench/celery && "$root/.venv/bin/python" bench.py --tasks "$tasks" --latency-tasks "$latency_tasks")
    stop_celery
}

log "Celery with publisher confirms: $tasks tasks at once, then $latency_tasks one at a time"
celery_confirm_json="$(run_celery 1)"
log "Celery without publisher confirms (its default)"
celery_default_json="$(run_celery 0)"

"$root/.venv/bin/python" - "$kka_json" "$celery_confirm_json" "$celery_default_json" "$out_dir/broker-$stamp.json" \
    "$load_at_start" <<'PY'
import json
import sys

kka, confirm, default = (json.loads(argument) for argument in sys.argv[1:4])
path, load = sys.argv[4], sys.argv[5]

def line(name, result):
    t, l = result["throughput"], result["latency"]
    return (f"{name:<28} {t['tasks_per_sec']:>8.0f} tasks/s   one at a time: p50 {l['p50_ms']:.3f} ms, "
            f"p99 {l['p99_ms']:.3f} ms")

print(line("kka", kka))
print(line("Celery, publisher confirms", confirm))
print(line("Celery, no confirms", default))
best = max(confirm["throughput"]["tasks_per_sec"], default["throughput"]["tasks_per_sec"])
fastest_p50 = min(confirm["latency"]["p50_ms"], default["latency"]["p50_ms"])
print(f"kka / best Celery throughput: {kka['throughput']['tasks_per_sec'] / best:.1f}x; "
      f"p50 one at a time: kka {kka['latency']['p50_ms']:.3f} ms vs Celery {fastest_p50:.3f} ms")
print(f"load average at start: {load}")
with open(path, "w") as file:
    record = {"kka": kka, "celery_confirms": confirm, "celery_no_confirms": default, "load_average": load}
    json.dump(record, file, indent=2)
print(f"results written to {path}")
PY
