#!/usr/bin/env bash
# The split deployment on one machine: Redis (started if it does not answer), the five modules
# as their own services (catalog twice), and the gateway in front, all on 127.0.0.1.
#   scripts/split.sh            (make split)  — Ctrl-C stops everything
# Ports: gateway $SHOP_PORT (8000); services 8101.. . Data: $SHOP_DATA_DIR (./var/split), logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export SHOP_DATA_DIR=${SHOP_DATA_DIR:-./var/split}
export SHOP_REDIS_URL=${SHOP_REDIS_URL:-redis://127.0.0.1:6379/0}
export SHOP_TRANSPORT=dramatiq
GATEWAY_PORT=${SHOP_PORT:-8000}
mkdir -p "$SHOP_DATA_DIR"

if ! "$BIN/python" -c "import redis,sys; redis.Redis.from_url('$SHOP_REDIS_URL', socket_timeout=2).ping()" 2>/dev/null; then
    echo "split: starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do
        "$BIN/python" -c "import redis; redis.Redis.from_url('$SHOP_REDIS_URL', socket_timeout=1).ping()" 2>/dev/null && break
        sleep 0.2
    done
fi

"$BIN/shop" migrate
# the signing key: users signs, every other process verifies with the public half
"$BIN/python" -c "from shop.settings import Settings; from shop.security.keys import load_keys; load_keys(Settings.from_env())"

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

start() {  # name port modules...
    local name=$1 port=$2; shift 2
    "$BIN/shop" serve "$@" --port "$port" >"$SHOP_DATA_DIR/$name.log" 2>&1 &
    pids+=($!)
    echo "split: $name (${*}) on :$port, log $SHOP_DATA_DIR/$name.log" >&2
}
start users 8101 users
start catalog-1 8102 catalog
start catalog-2 8103 catalog
start orders 8104 orders
start payments 8105 payments
start delivery 8106 delivery
"$BIN/shop" gateway --port "$GATEWAY_PORT" >"$SHOP_DATA_DIR/gateway.log" 2>&1 &
pids+=($!)
echo "split: gateway on :$GATEWAY_PORT — Ctrl-C stops everything" >&2
wait -n "${pids[@]}"
