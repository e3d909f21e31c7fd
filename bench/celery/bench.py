"""Measures Celery's task throughput and one-at-a-time latency with no-op tasks.

Prints one JSON object with the fields of `kka-coordinator bench --json` that
scripts/bench-broker.sh compares. The Celery worker must already be running; that script
starts it.
"""

import argparse
import json
import math
import time

import redis

from tasks import BACKEND_URL, noop


def percentile(sorted_values, q):
    """Returns the q-quantile (0..1) of already sorted values, by the nearest-rank method."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values)))) - 1
    return sorted_values[rank]


def figures(tasks, seconds, latencies_ms):
    latencies_ms = sorted(latencies_ms)
    return {
        "tasks": tasks,
        "seconds": seconds,
        "tasks_per_sec": tasks / seconds,
        "p50_ms": percentile(latencies_ms, 0.5),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": latencies_ms[-1] if latencies_ms else 0.0,
    }


def throughput_run(count, timeout):
    """Sends `count` tasks at once, then waits until every result is stored in Redis.

    It counts the stored results with DBSIZE instead of collecting them through a ResultSet.
    Collecting costs the client more than the tasks cost the worker: 246 against 630 tasks/s at
    20,000 tasks on the 2-core benchmark machine. So the figure is the best that Celery reaches.
    The Redis database must hold nothing but this benchmark's results.
    """
    client = redis.Redis.from_url(BACKEND_URL)
    stored_before = client.dbsize()
    started = time.perf_counter()
    for _ in range(count):
        noop.delay(time.time())
    deadline = time.monotonic() + timeout
    while client.dbsize() < stored_before + count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {client.dbsize() - stored_before} of {count} results stored within {timeout} s")
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    return {"tasks": count, "seconds": seconds, "tasks_per_sec": count / seconds}


def latency_run(count, timeout):
    """Sends one task at a time and waits for its result before sending the next."""
    latencies_ms = []
    started = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        noop.delay(0).get(timeout=timeout)
        latencies_ms.append((time.perf_counter() - sent) * 1000.0)
    return figures(count, time.perf_counter() - started, latencies_ms)


def wait_for_worker(timeout):
    """Waits for the result of one task, so that the worker's start-up is not measured."""
    noop.delay(0).get(timeout=timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20000, help="tasks in the throughput run")
    parser.add_argument("--latency-tasks", type=int, default=2000, help="tasks in the latency run")
    parser.add_argument("--warmup-tasks", type=int, default=1000, help="tasks sent before measuring")
    parser.add_argument("--timeout-secs", type=float, default=600.0, help="seconds each run may take")
    args = parser.parse_args()

    wait_for_worker(args.timeout_secs)
    if args.warmup_tasks > 0:
        throughput_run(args.warmup_tasks, args.timeout_secs)
    report = {
        "throughput": throughput_run(args.tasks, args.timeout_secs),
        "latency": latency_run(args.latency_tasks, args.timeout_secs),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
