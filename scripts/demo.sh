#!/usr/bin/env bash
# The main job. NOTE: until the worker registers its generate, score and train handlers, this
# runs the smoke job (no-op tasks through RabbitMQ and Redis); it will run the KKA curriculum
# experiment of config/demo.toml once they are registered.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$root/scripts/smoke.sh"
