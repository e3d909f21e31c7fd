"""Prints the tables of scripts/bench-detector.sh from its JSON reports.

Usage: summarize.py speed OUT ATTEMPTS THREADS...   or   summarize.py quality OUT CLASSES...
"""

import json
import statistics
import sys

NAMES = {"rust": "kka (Rust, tch)", "python": "PyTorch Python loop", "loader": "PyTorch DataLoader"}


def speed(out, attempts, thread_counts):
    print(f"{'threads':<8} {'implementation':<22} {'pretrain img/s':>15} {'train img/s':>12} "
          f"{'s/epoch':>8} {'peak RSS MiB':>13} {'batching %':>11}")
    for count in thread_counts:
        medians = {}
        for kind in ("rust", "python", "loader"):
            runs = [json.load(open(f"{out}/speed-{kind}-t{count}-{a}.json")) for a in range(1, attempts + 1)]

            def median(key):
                return statistics.median(run[key] for run in runs)

            medians[kind] = (median("pretrain_images_per_second"), median("train_images_per_second"))
            batching = f"{100 * median('batching_fraction'):.2f}" if kind == "rust" else ""
            print(f"{count:<8} {NAMES[kind]:<22} {medians[kind][0]:>15.0f} {medians[kind][1]:>12.0f} "
                  f"{median('seconds_per_epoch'):>8.2f} {median('peak_rss_bytes') / 2**20:>13.0f} {batching:>11}")
        for kind in ("python", "loader"):
            pretrain_ratio = medians["rust"][0] / medians[kind][0]
            train_ratio = medians["rust"][1] / medians[kind][1]
            print(f"{count:<8} {'ratio to ' + kind:<22} {pretrain_ratio:>15.2f} {train_ratio:>12.2f}")
    print(f"medians of {attempts} interleaved attempts")


def quality(out, classes):
    reports = [json.load(open(f"{out}/quality-{c}.json")) for c in classes]
    for r in reports:
        print(f"class {r['normal_class']} {r['class_name']:<12} AUROC {r['auroc']:.3f}  AUPR {r['aupr']:.3f}  "
              f"{r['pretrain_epochs']}+{r['epochs']} epochs  {r['train_seconds']:.0f} s  "
              f"{r['seconds_per_epoch']:.2f} s/epoch  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
    print(f"mean AUROC {statistics.mean(r['auroc'] for r in reports):.3f} over {len(reports)} classes")


if __name__ == "__main__":
    if sys.argv[1] == "speed":
        speed(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        quality(sys.argv[2], sys.argv[3:])
