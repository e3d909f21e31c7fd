#!/usr/bin/env bash
# Procedural generator throughput on one CPU core: the Rust generator (release build, libtorch
# with one thread) against the same operations written with PyTorch's Python API
# (bench/generator/procedural_torch.py), in one run on the same machine.
#
#   scripts/bench-generator.sh [COUNT] [BATCH] [ROUNDS]
#
# COUNT anomalies per case (default 20000), BATCH anomalies per generator call (default 512).
# The two implementations run alternately ROUNDS times (default 3). The table reports each
# case's best round in images per CPU-second of the generating thread, which stays comparable
# when other processes share the machine, and the wall-clock rate of that round beside it.
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

# libtorch frees its large CPU buffers after every op. With glibc's default thresholds those
# buffers are mmapped and unmapped each time, and page faults took about a fifth of the run
# time under perf. Keeping them on the heap speeds both implementations up alike.
export MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912

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
best = {}
for r in rows:
    key = (r["implementation"], r["shape"], r["family"])
    if key not in best or r["images_per_cpu_second"] > best[key]["images_per_cpu_second"]:
        best[key] = r
print()
print("best round per case; images per CPU-second of one thread (wall-clock rate in brackets)")
print(f"{'shape':<10} {'family':<8} {'rust-tch':>20} {'python-torch':>20} {'speed-up':>9}")
for (implementation, shape, family), rust in best.items():
    if implementation != "rust-tch":
        continue
    python = best.get(("python-torch", shape, family))
    rate = lambda r: f"{r['images_per_cpu_second']:,.0f} ({r['images_per_second']:,.0f})"
    ratio = f"{rust['images_per_cpu_second'] / python['images_per_cpu_second']:.1f}x" if python else "-"
    print(f"{shape:<10} {family:<8} {rate(rust):>20} {rate(python) if python else '-':>20} {ratio:>9}")
PY
