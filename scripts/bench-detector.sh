#!/usr/bin/env bash
# Detector benchmarks on one-class Fashion-MNIST (results go to docs/benchmarks.md by hand).
#
#   scripts/bench-detector.sh speed     Rust vs PyTorch Python training speed, same network,
#                                       batch, Adam settings and threads, run back to back;
#                                       plus peak RSS and the batching share of an epoch.
#   scripts/bench-detector.sh quality   Deep SVDD with the config/default.toml settings on each
#                                       of the 10 classes (about 30-60 minutes on 2 cores).
#
# Environment: THREADS (default 2), SPEED_EPOCHS (default 3), SPEED_CLASS (default 0),
# CLASSES (default "0 1 2 3 4 5 6 7 8 9"), OUT (default target/bench-detector).
# Other jobs on the machine distort the numbers; check `uptime` and rerun if they look off.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh

mode="${1:-speed}"
threads="${THREADS:-2}"
out="${OUT:-target/bench-detector}"
mkdir -p "$out"

cargo build --release -p kka-worker --bin kka-worker
worker="$root/target/release/kka-worker"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load: $(cut -d' ' -f1-3 /proc/loadavg)"

speed() {
  local epochs="${SPEED_EPOCHS:-3}" class="${SPEED_CLASS:-0}"
  for attempt in 1 2; do
    "$worker" baseline --normal-class "$class" --threads "$threads" --epochs "$epochs" \
      --pretrain-epochs "$epochs" --output "$out/speed-rust-$attempt.json" 2>/dev/null
    .venv/bin/python bench/detector/torch_speed.py --threads "$threads" --epochs "$epochs" \
      --pretrain-epochs "$epochs" --normal-class "$class" 2>/dev/null > "$out/speed-python-$attempt.json"
  done
  python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
print(f"{'run':<6} {'impl':<8} {'pretrain img/s':>15} {'train img/s':>12} {'s/epoch':>8} {'peak RSS MiB':>13} {'batching %':>11}")
for attempt in (1, 2):
    rust = json.load(open(f"{out}/speed-rust-{attempt}.json"))
    python = json.load(open(f"{out}/speed-python-{attempt}.json"))
    print(f"{attempt:<6} {'rust':<8} {rust['pretrain_images_per_second']:>15.0f} {rust['train_images_per_second']:>12.0f} "
          f"{rust['seconds_per_epoch']:>8.2f} {rust['peak_rss_bytes'] / 2**20:>13.0f} {100 * rust['batching_fraction']:>11.3f}")
    print(f"{attempt:<6} {'python':<8} {python['pretrain_images_per_second']:>15.0f} {python['train_images_per_second']:>12.0f} "
          f"{python['seconds_per_epoch']:>8.2f} {python['peak_rss_bytes'] / 2**20:>13.0f} {'':>11}")
    print(f"{attempt:<6} {'ratio':<8} {rust['pretrain_images_per_second'] / python['pretrain_images_per_second']:>15.2f} "
          f"{rust['train_images_per_second'] / python['train_images_per_second']:>12.2f}")
EOF
}

quality() {
  local classes="${CLASSES:-0 1 2 3 4 5 6 7 8 9}"
  for class in $classes; do
    "$worker" baseline --normal-class "$class" --threads "$threads" --output "$out/quality-$class.json" 2>/dev/null
  done
  python3 - "$out" $classes <<'EOF'
import json, sys
out, classes = sys.argv[1], sys.argv[2:]
reports = [json.load(open(f"{out}/quality-{c}.json")) for c in classes]
for r in reports:
    print(f"class {r['normal_class']} {r['class_name']:<12} AUROC {r['auroc']:.3f}  AUPR {r['aupr']:.3f}  "
          f"{r['pretrain_epochs']}+{r['epochs']} epochs {r['train_seconds']:.0f} s  {r['seconds_per_epoch']:.2f} s/epoch  "
          f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
print(f"mean AUROC {sum(r['auroc'] for r in reports) / len(reports):.3f}")
EOF
}

case "$mode" in
  speed) speed ;;
  quality) quality ;;
  *) echo "unknown mode $mode: use speed or quality" >&2; exit 2 ;;
esac
