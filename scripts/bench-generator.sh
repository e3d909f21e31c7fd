#!/usr/bin/env bash
# Procedural generator throughput on one CPU core: the Rust generator (release build, libtorch
# with one thread) against the same operations written with PyTorch's Python API
# (bench/generator/procedural_torch.py), in one run on the same machine.
#
#   scripts/bench-generator.sh [COUNT] [BATCH] [ROUNDS]
#
# COUNT anomalies per case (default 20000), BATCH anomalies per generator call (default 512).
# The two implementations run alternately ROUNDS times (default 3) and the table reports each
# case's best round, which filters out slowdowns from other processes on a shared machine.
# Prints one JSON line per case, implementation and round, then the table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh

count="${1:-20000}"
batch="${2:-512}"
rounds="${3:-3}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

# Pin both runs to one core when taskset is available, so "per core" holds for the process.
pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
fi

cargo build --release -q -p kka-worker --example bench_generator
echo "# $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)" >&2
for _ in $(seq "$rounds"); do
    "${pin[@]}" target/release/examples/bench_generator --count "$count" --batch "$batch" | tee -a "$results"
    "${pin[@]}" .venv/bin/python -W ignore bench/generator/procedural_torch.py --count "$count" --batch "$batch" | tee -a "$results"
done

python3 - "$results" <<'PY'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
speed = {}
for r in rows:
    key = (r["implementation"], r["shape"], r["family"])
    speed[key] = max(speed.get(key, 0.0), r["images_per_second"])
print()
print("best of each case's rounds, images per second on one core")
print(f"{'shape':<10} {'family':<8} {'rust-tch':>10} {'python-torch':>13} {'speed-up':>9}")
for (implementation, shape, family), rust in speed.items():
    if implementation != "rust-tch":
        continue
    python = speed.get(("python-torch", shape, family))
    ratio = f"{rust / python:.1f}x" if python else "-"
    python_text = f"{python:,.0f}" if python else "-"
    print(f"{shape:<10} {family:<8} {rust:>10,.0f} {python_text:>13} {ratio:>9}")
PY
