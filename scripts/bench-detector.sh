#!/usr/bin/env bash
# Detector benchmarks on one-class Fashion-MNIST (results go to docs/benchmarks.md by hand).
#
#   scripts/bench-detector.sh speed     Rust vs PyTorch Python training speed, same network,
#                                       batch, Adam settings and threads, run interleaved;
#                                       plus peak RSS and the batching share of an epoch.
#   scripts/bench-detector.sh quality   Deep SVDD with the config/default.toml settings on each
#                                       of the 10 classes (about 30-60 minutes on 2 cores).
#
# Environment: THREADS (thread counts, default "1 2"; quality uses the last), ATTEMPTS
# (default 3), SPEED_EPOCHS (default 3), SPEED_CLASS (default 0),
# CLASSES (default "0 1 2 3 4 5 6 7 8 9"), OUT (default target/bench-detector).
# Other jobs on the machine distort the numbers; check the load printed first and rerun if
# the numbers look off.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh

mode="${1:-speed}"
threads="${THREADS:-1 2}"
out="${OUT:-target/bench-detector}"
mkdir -p "$out"

cargo build --release -p kka-worker --bin kka-worker
worker="$root/target/release/kka-worker"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load: $(cut -d' ' -f1-3 /proc/loadavg)"

speed() {
  local epochs="${SPEED_EPOCHS:-3}" class="${SPEED_CLASS:-0}" attempts="${ATTEMPTS:-3}"
  for count in $threads; do
    for attempt in $(seq "$attempts"); do
      "$worker" baseline --normal-class "$class" --threads "$count" --epochs "$epochs" \
        --pretrain-epochs "$epochs" --output "$out/speed-rust-t$count-$attempt.json" >/dev/null 2>&1
      .venv/bin/python bench/detector/torch_speed.py --threads "$count" --epochs "$epochs" \
        --pretrain-epochs "$epochs" --normal-class "$class" 2>/dev/null >"$out/speed-python-t$count-$attempt.json"
      .venv/bin/python bench/detector/torch_speed.py --threads "$count" --epochs "$epochs" --data-loader \
        --pretrain-epochs "$epochs" --normal-class "$class" 2>/dev/null >"$out/speed-loader-t$count-$attempt.json"
    done
  done
  python3 bench/detector/summarize.py speed "$out" "$attempts" $threads
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

quality() {
  local classes="${CLASSES:-0 1 2 3 4 5 6 7 8 9}"
  for class in $classes; do
    "$worker" baseline --normal-class "$class" --threads "${threads##* }" \
      --output "$out/quality-$class.json" 2>/dev/null
  done
  python3 bench/detector/summarize.py quality "$out" $classes
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

case "$mode" in
  speed) speed ;;
  quality) quality ;;
  *) echo "unknown mode $mode: use speed or quality" >&2; exit 2 ;;
esac
