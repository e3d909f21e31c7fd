#!/usr/bin/env bash
# Idempotent set-up for kka: PyTorch (for libtorch) in .venv, the Fashion-MNIST files, and
# running RabbitMQ and Redis servers. Safe to run again; each step is skipped when done.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
torch_version="2.13.0"
fashion_dir="/usr/share/datasets/fashion-mnist"

log() { printf 'setup: %s\n' "$*" >&2; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_debian_like() { command -v apt-get >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        fail "need root to run: $*"
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -q >/dev/null
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

install_torch() {
    local python="$root/.venv/bin/python"
    if [ -x "$python" ] && "$python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
        log "torch $torch_version already in .venv"
        return
    fi
    command -v python3 >/dev/null || fail "python3 is missing; install Python 3.9 or newer"
    log "installing torch $torch_version into .venv (about 5 GB, a minute or more)"
    [ -x "$python" ] || python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "torch==$torch_version"
}

install_dataset() {
    if [ -f "$fashion_dir/train-images-idx3-ubyte.gz" ]; then
        log "Fashion-MNIST present in $fashion_dir"
        return
    fi
    is_debian_like || fail "Fashion-MNIST is missing from $fashion_dir; install the IDX .gz files there or set dataset.path"
    log "installing Debian package dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
}

# Host and port of a URL such as amqp://user:pass@host:5672/vhost.
url_host() { local rest="${1#*://}"; rest="${rest##*@}"; rest="${rest%%/*}"; echo "${rest%%:*}"; }
url_port() { local rest="${1#*://}"; rest="${rest##*@}"; rest="${rest%%/*}"; [[ "$rest" == *:* ]] && echo "${rest##*:}" || echo "$2"; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for_port() {
    local name="$1" host="$2" port="$3"
    for _ in $(seq 1 60); do
        port_open "$host" "$port" && return 0
        sleep 1
    done
    fail "$name did not start listening on $host:$port within 60 s"
}

is_local() { [[ "$1" == "127.0.0.1" || "$1" == "localhost" || "$1" == "::1" ]]; }

ensure_redis() {
    local url="${KKA__STORE__URL:-redis://127.0.0.1:6379/0}"
    local host port
    host="$(url_host "$url")"; port="$(url_port "$url" 6379)"
    if port_open "$host" "$port"; then log "Redis answers on $host:$port"; return; fi
    is_local "$host" || fail "Redis at $host:$port does not answer; start it or fix KKA__STORE__URL"
    if ! command -v redis-server >/dev/null; then
        is_debian_like || fail "Redis is not installed; install redis-server 6 or newer and start it on port $port"
        log "installing redis-server"
        apt_install redis-server
    fi
    log "starting redis-server on port $port"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/kka.log >/dev/null
    wait_for_port Redis "$host" "$port"
}

ensure_rabbitmq() {
    local url="${KKA__BROKER__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
    local host port
    host="$(url_host "$url")"; port="$(url_port "$url" 5672)"
    if port_open "$host" "$port"; then log "RabbitMQ answers on $host:$port"; return; fi
    is_local "$host" || fail "RabbitMQ at $host:$port does not answer; start it or fix KKA__BROKER__URL"
    if ! command -v rabbitmq-server >/dev/null; then
        is_debian_like || fail "RabbitMQ is not installed; install rabbitmq-server 3.10 or newer and start it on port $port"
        log "installing rabbitmq-server"
        apt_install rabbitmq-server
    fi
    log "starting rabbitmq-server"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for_port RabbitMQ "$host" "$port"
}

install_torch
install_dataset
ensure_redis
ensure_rabbitmq
log "ready"
