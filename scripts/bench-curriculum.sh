#!/usr/bin/env bash
# Curriculum benchmark on one-class Fashion-MNIST: one KKA experiment per normal class with the
# demo settings. It prints a table of baseline and per-round AUROC, the hard fraction of each
# round's new anomalies under the round-0 detector, and the orchestration share. The results go
# to docs/benchmarks.md by hand.
#
# Usage: scripts/bench-curriculum.sh [CLASS...]      (default: all ten classes, 0 to 9)
# Environment: CONFIG (default config/demo.toml), SPLIT_Q (quantile of the split rule; default
# the config's), OUT (default runs/bench-curriculum). It takes roughly 4 to 6 minutes per class
# on 2 CPU cores; other jobs on the machine slow it down, so check `uptime` first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

classes=("$@")
[ ${#classes[@]} -gt 0 ] || classes=(0 1 2 3 4 5 6 7 8 9)
config="${CONFIG:-config/demo.toml}"
out="${OUT:-runs/bench-curriculum}"
stamp="$(date +%Y%m%d-%H%M%S)"
log() { printf 'bench-curriculum: %s\n' "$*" >&2; }

bash scripts/setup.sh
source scripts/env.sh
cargo build --quiet -p kka-worker -p kka-coordinator --bins
mkdir -p "$out"

if [ -n "${SPLIT_Q:-}" ]; then
    variant="$out/config-q$SPLIT_Q.toml"
    cp "$config" "$variant"
    printf '\n[curriculum.split]\nkind = "quantile"\nq = %s\nmargin = 0.0\n' "$SPLIT_Q" >>"$variant"
    config="$variant"
fi
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "config: $config, classes: ${classes[*]}"

worker_pids=()
stop_workers() {
    local pid
    for pid in "${worker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    worker_pids=()
}
trap stop_workers EXIT
trap 'exit 130' INT TERM
for n in 1 2; do
    target/debug/kka-worker run --config "$config" --id "bench-w$n" >"$out/worker-$n-$stamp.log" 2>&1 &
    worker_pids+=("$!")
done

experiments=()
for class in "${classes[@]}"; do
    experiment="bench-c$class-$stamp"
    log "class $class: experiment $experiment"
    start=$(date +%s)
    target/debug/kka-coordinator run --config "$config" --normal-class "$class" \
        --experiment "$experiment" --output "$out" >"$out/$experiment.out" 2>"$out/$experiment.log"
    log "class $class finished in $(( $(date +%s) - start )) s"
    experiments+=("$experiment")
done

python3 - "$out" "${experiments[@]}" <<'PY'
import json, sys
out, experiments = sys.argv[1], sys.argv[2:]
reports = [json.load(open(f"{out}/{e}/report.json")) for e in experiments]
rounds = max(len(r["rounds"]) for r in reports)
head = ["class", "baseline"] + [f"r{i} AUROC" for i in range(1, rounds + 1)] + ["final - baseline"]
head += [f"r{i} hard (r0)" for i in range(1, rounds + 1)] + ["orch. all", "orch. gen+score", "minutes"]
print("| " + " | ".join(head) + " |")
print("|" + "---:|" * len(head))
sums = [0.0] * (len(head) - 1)
for report in reports:
    aurocs = [r["auroc"] for r in report["rounds"]]
    hard = [r["hard_fraction_new_vs_baseline"] for r in report["rounds"]]
    row = [report["baseline_auroc"]] + aurocs + [aurocs[-1] - report["baseline_auroc"]] + hard
    by_phase = report["orchestration_share_by_phase"]
    short = [by_phase[p] for p in ("generate", "score") if p in by_phase]
    row += [report["orchestration_share"] or 0.0, sum(short) / max(len(short), 1), report["total_seconds"] / 60]
    sums = [s + v for s, v in zip(sums, row)]
    print(f"| {report['config']['normal_classes'][0]} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
print("| mean | " + " | ".join(f"{s / len(reports):.3f}" for s in sums) + " |")
wins = sum(r["rounds"][-1]["auroc"] > r["baseline_auroc"] for r in reports)
rising = sum(all(a["hard_fraction_new_vs_baseline"] <= b["hard_fraction_new_vs_baseline"] for a, b in zip(r["rounds"], r["rounds"][1:])) for r in reports)
print(f"\nfinal round beats the baseline in {wins} of {len(reports)} classes; "
      f"hard fraction under the round-0 detector never falls in {rising} of {len(reports)} classes")
PY
