#!/usr/bin/env bash
# The main job: set-up, build, start two `kka-worker run` processes, then run a KKA curriculum
# experiment on one-class Fashion-MNIST with `kka-coordinator run --config config/demo.toml`.
# The workers stop when the script exits, also on Ctrl-C or an error.
#
# Usage: scripts/demo.sh [--normal-class K] [--experiment ID] [--config FILE] [--output DIR]
# Environment variables KKA__SECTION__KEY override the config as usual. The report is written
# to <output>/<experiment>/report.md (default runs/demo-c<K>-<time>/) and worker logs beside it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

normal_class=0
config="config/demo.toml"
output="runs"
experiment=""
while [ $# -gt 0 ]; do
    case "$1" in
        --normal-class) normal_class="$2"; shift 2 ;;
        --experiment) experiment="$2"; shift 2 ;;
        --config) config="$2"; shift 2 ;;
        --output) output="$2"; shift 2 ;;
        *) echo "demo: unknown argument $1; use --normal-class K, --experiment ID, --config FILE or --output DIR" >&2; exit 2 ;;
    esac
done
case "$normal_class" in
    ''|*[!0-9]*) echo "demo: invalid --normal-class $normal_class; use a class label such as 0 to 9" >&2; exit 2 ;;
esac
experiment="${experiment:-demo-c$normal_class-$(date +%Y%m%d-%H%M%S)}"

log() { printf 'demo: %s\n' "$*" >&2; }

bash scripts/setup.sh
source scripts/env.sh
# The dev profile is optimised (opt-level 1, dependencies 2) and is the build the tests use, so
# a machine that ran the tests builds nothing here.
log "building kka-worker and kka-coordinator"
cargo build --quiet -p kka-worker -p kka-coordinator --bins

run_dir="$output/$experiment"
mkdir -p "$run_dir"
worker_pids=()

stop_workers() {
    local pid
    for pid in "${worker_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${worker_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    worker_pids=()
}
trap stop_workers EXIT
trap 'exit 130' INT TERM

for n in 1 2; do
    target/debug/kka-worker run --config "$config" --id "demo-w$n" >"$run_dir/worker-$n.log" 2>&1 &
    worker_pids+=("$!")
done
log "started workers ${worker_pids[*]}; logs in $run_dir"

target/debug/kka-coordinator run --config "$config" --normal-class "$normal_class" \
    --experiment "$experiment" --output "$output"
log "report: $run_dir/report.md (also report.json, report.svg and dpo/)"
