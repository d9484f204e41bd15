#!/usr/bin/env bash
# Run the Shop benchmarks and print their figures (they print, never assert).
#   bench/run.sh            everything (~5 minutes)
#   bench/run.sh ask        only the in-process bus ask overhead
#   bench/run.sh http       only the HTTP servers comparison
#   bench/run.sh catalog    only the catalog read: shop run vs a bare Litestar app on the same catalog.db
#   bench/run.sh orders-wrk the orders figures of record: wrk posting orders to shop run, with and
#                           without customers polling, against the hand-written floor (same run)
#   bench/run.sh orders-pg  the same with the shop on PostgreSQL (127.0.0.1:5432, database shop_bench)
#   bench/run.sh orders     only orders per second through HTTP and the saga latency
#   bench/run.sh orders-split  the same against the split deployment (Redis db 11 on 127.0.0.1:6379,
#                           the modules as services, the gateway); not part of `all`
#   bench/run.sh statements  the shop's own statements replayed with stdlib sqlite3 vs the floor
#                           (what the storage design costs before any Python); not part of `all`
#   bench/run.sh orders-inprocess  orders through the ASGI app in this one process (no server, no
#                           wrk): CPU per order, and with --profile cProfile's top functions and
#                           Python calls per order; not part of `all`
#   bench/run.sh transport  the Dramatiq/Redis transport: ask latency vs raw Redis, drain
#                           throughput vs Dramatiq's defaults, trickled deliveries' consumer CPU;
#                           not part of `all`
#   bench/run.sh orders-ab --a DIR  orders-wrk's quiet phase for two source trees in alternating
#                           rounds, with medians and B / A (a change smaller than the machine's
#                           10-15% run-to-run noise shows only this way); not part of `all`
# Extra arguments after the name go to that script, e.g. `bench/run.sh http --duration 4`.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "bench: $PY not found; run 'make install' first" >&2
    exit 2
fi

what="${1:-all}"
[[ $# -gt 0 ]] && shift

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    echo "bench: installing wrk (apt-get install -y wrk)" >&2
    if ! apt-get install -y wrk >/dev/null 2>&1; then
        apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1
    fi
    command -v wrk >/dev/null 2>&1 || { echo "bench: could not install wrk" >&2; return 1; }
}

header() {
    echo "== $1"
    echo "   $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) vCPU; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "   load average $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews absolute figures; compare ratios)"
}

status=0
if [[ "$what" == all || "$what" == ask ]]; then
    header "in-process bus: ask overhead (bench/ask_overhead.py)"
    "$PY" bench/ask_overhead.py "$@" || status=1
    echo
fi
if [[ "$what" == all || "$what" == http ]]; then
    header "HTTP: shop run on granian vs uvicorn vs bare Litestar (bench/http_servers.py)"
    if ensure_wrk; then
        "$PY" bench/http_servers.py "$@" || status=1
    else
        status=1
    fi
fi
if [[ "$what" == all || "$what" == catalog ]]; then
    [[ "$what" == all ]] && echo
    header "catalog read: shop run vs bare Litestar + SQLAlchemy on the same catalog.db (bench/catalog_read.py)"
    if ensure_wrk; then
        "$PY" bench/catalog_read.py "$@" || status=1
    else
        status=1
    fi
fi
if [[ "$what" == all || "$what" == orders ]]; then
    [[ "$what" == all ]] && echo
    header "orders through HTTP on shop run: orders/s and saga latency (bench/orders.py)"
    "$PY" bench/orders.py "$@" || status=1
    echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
if [[ "$what" == all || "$what" == orders-wrk ]]; then
    [[ "$what" == all ]] && echo
    header "orders posted by wrk to shop run (SQLite) vs the hand-written floor (bench/orders_wrk.py)"
    if ensure_wrk; then
        "$PY" bench/orders_wrk.py "$@" || status=1
    else
        status=1
    fi
fi
if [[ "$what" == orders-pg ]]; then
    header "orders posted by wrk to shop run on PostgreSQL (bench/orders_wrk.py --database-url)"
    if ensure_wrk; then
        "$PY" bench/orders_wrk.py --database-url "${SHOP_BENCH_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}" "$@" || status=1
    else
        status=1
    fi
fi
if [[ "$what" == orders-split ]]; then
    header "orders through HTTP on the split deployment: orders/s and saga latency (bench/orders.py --split)"
    "$PY" bench/orders.py --split "$@" || status=1
    echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
if [[ "$what" == statements ]]; then
    header "the shop's statements of an order, replayed with stdlib sqlite3, vs the floor (bench/statements_replay.py)"
    "$PY" bench/statements_replay.py "$@" || status=1
fi
if [[ "$what" == orders-ab ]]; then
    header "orders posted by wrk, two source trees in alternating rounds (bench/orders_ab.py)"
    if ensure_wrk; then
        "$PY" bench/orders_ab.py "$@" || status=1
    else
        status=1
    fi
fi
if [[ "$what" == orders-inprocess ]]; then
    header "orders through the ASGI app in one process, no server (bench/orders_inprocess.py)"
    "$PY" bench/orders_inprocess.py "$@" || status=1
fi
if [[ "$what" == transport ]]; then
    header "the Dramatiq/Redis transport vs raw Redis and Dramatiq's defaults (bench/transport_redis.py)"
    "$PY" bench/transport_redis.py "$@" || status=1
fi
case "$what" in
    all | ask | http | catalog | orders | orders-wrk | orders-pg | orders-split | orders-ab | statements | orders-inprocess | transport) ;;
    *)
        echo "usage: bench/run.sh [all|ask|http|catalog|orders|orders-wrk|orders-pg|orders-split|orders-ab|statements|orders-inprocess|transport] [args]" >&2
        exit 2
        ;;
esac
exit $status
