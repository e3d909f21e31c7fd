#!/usr/bin/env bash
# The test command: set-up, then every test in the workspace, integration and end-to-end
# tests included, against the real RabbitMQ and Redis. Extra arguments go to cargo test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --workspace --bins
cargo test --workspace "$@"
