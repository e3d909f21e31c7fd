#!/usr/bin/env bash
# Procedural generator throughput on one CPU core: the Rust generator (release build, libtorch
# with one thread) against the same operations written with PyTorch's Python API
# (bench/generator/procedural_torch.py), in one run on the same machine.
#
#   scripts/bench-generator.sh [COUNT] [BATCH]
#
# COUNT anomalies per case (default 20000), BATCH anomalies per generator call (default 512).
# Prints one JSON line per case and implementation, then a table of images per second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh

count="${1:-20000}"
batch="${2:-512}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

# Pin both runs to one core when taskset is available, so "per core" holds for the process.
pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
fi

cargo build --release -q -p kka-worker --example bench_generator
echo "# $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)" >&2
"${pin[@]}" target/release/examples/bench_generator --count "$count" --batch "$batch" | tee -a "$results"
"${pin[@]}" .venv/bin/python -W ignore bench/generator/procedural_torch.py --count "$count" --batch "$batch" | tee -a "$results"

python3 - "$results" <<'PY'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
speed = {(r["implementation"], r["shape"], r["family"]): r["images_per_second"] for r in rows}
print()
print(f"{'shape':<10} {'family':<8} {'rust-tch img/s':>15} {'python-torch img/s':>19} {'speed-up':>9}")
for (implementation, shape, family), rust in speed.items():
    if implementation != "rust-tch":
        continue
    python = speed.get(("python-torch", shape, family))
    ratio = f"{rust / python:.1f}x" if python else "-"
    python_text = f"{python:,.0f}" if python else "-"
    print(f"{shape:<10} {family:<8} {rust:>15,.0f} {python_text:>19} {ratio:>9}")
PY
