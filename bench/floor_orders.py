"""The hand-written floor: one order's durable writes with stdlib sqlite3, no framework at all.

The same writes an order costs the shop, done by hand: one SQLite file per module, WAL,
synchronous=NORMAL, one process, no HTTP and no bus --

  orders:   insert the order and its saga row (one transaction)
  catalog:  two conditional stock updates, two reservation rows, an inbox row
  orders:   a saga step row
  users:    the address read
  payments: the payment row + an inbox row; the capture + an outbox row; delete the outbox row
  orders:   the order completed + the saga row
  catalog:  the stock committed + an inbox row
  delivery: the shipment + an inbox row

`floor(n)` returns CPU milliseconds per order (and wall milliseconds): the median of five rounds
of n / 5 orders; the bench prints the shop's CPU per order as a multiple of it.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

SCHEMA = {
    "orders": [
        "CREATE TABLE orders (id BLOB PRIMARY KEY, customer_id BLOB, status TEXT, items TEXT, total INT,"
        " currency TEXT, address_id BLOB, created_at REAL, updated_at REAL)",
        "CREATE TABLE sagas (id BLOB PRIMARY KEY, status TEXT, step TEXT, data TEXT, version INT,"
        " updated_at REAL)",
        "CREATE TABLE saga_steps (id INTEGER PRIMARY KEY, saga_id BLOB, step TEXT, status TEXT, at REAL)",
    ],
    "catalog": [
        "CREATE TABLE products (id INTEGER PRIMARY KEY, price INT, stock INT, reserved INT)",
        "CREATE TABLE reservations (id BLOB, product_id INT, quantity INT, status TEXT,"
        " PRIMARY KEY (id, product_id))",
        "CREATE TABLE inbox (consumer TEXT, message_id BLOB, PRIMARY KEY (consumer, message_id))",
    ],
    "users": [
        "CREATE TABLE addresses (id BLOB PRIMARY KEY, user_id BLOB, line1 TEXT, city TEXT, country TEXT)",
    ],
    "payments": [
        "CREATE TABLE payments (id BLOB PRIMARY KEY, order_id BLOB, amount INT, status TEXT, ref TEXT)",
        "CREATE TABLE inbox (consumer TEXT, message_id BLOB, PRIMARY KEY (consumer, message_id))",
        "CREATE TABLE outbox (id BLOB PRIMARY KEY, envelope BLOB, created_at REAL)",
    ],
    "delivery": [
        "CREATE TABLE deliveries (id BLOB PRIMARY KEY, order_id BLOB, status TEXT, address TEXT)",
        "CREATE TABLE inbox (consumer TEXT, message_id BLOB, PRIMARY KEY (consumer, message_id))",
    ],
}


def _open(directory: Path) -> dict[str, sqlite3.Connection]:
    conns = {}
    for module, statements in SCHEMA.items():
        conn = sqlite3.connect(directory / f"{module}.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in statements:
            conn.execute(statement)
        conns[module] = conn
    conns["catalog"].executemany(
        "INSERT INTO products VALUES (?, 500, 100000000, 0)", [(i,) for i in range(20)]
    )
    user, address = uuid.uuid4().bytes, uuid.uuid4().bytes
    conns["users"].execute("INSERT INTO addresses VALUES (?, ?, 'Main St 1', 'Town', 'DE')", (address, user))
    conns["_user"] = conns["users"]  # keep the ids reachable below
    _ids["user"], _ids["address"] = user, address
    return conns


_ids: dict[str, bytes] = {}


def _one_order(c: dict[str, sqlite3.Connection], n: int) -> None:
    order, now = uuid.uuid4().bytes, time.time()
    o, cat, pay, dlv = c["orders"], c["catalog"], c["payments"], c["delivery"]
    o.execute("BEGIN IMMEDIATE")
    o.execute(
        "INSERT INTO orders VALUES (?, ?, 'PENDING', '[]', 0, 'EUR', ?, ?, ?)",
        (order, _ids["user"], _ids["address"], now, now),
    )
    o.execute("INSERT INTO sagas VALUES (?, 'RUNNING', 'reserve_stock', '{}', 1, ?)", (order, now))
    o.execute("COMMIT")
    cat.execute("BEGIN IMMEDIATE")
    for product in (n % 20, (n + 7) % 20):
        cat.execute(
            "UPDATE products SET reserved = reserved + 2 WHERE id = ? AND stock - reserved >= 2", (product,)
        )
        cat.execute("INSERT INTO reservations VALUES (?, ?, 2, 'HELD')", (order, product))
    cat.execute("INSERT INTO inbox VALUES ('catalog.reserve_stock', ?)", (uuid.uuid4().bytes,))
    cat.execute("COMMIT")
    o.execute("BEGIN IMMEDIATE")
    o.execute("INSERT INTO saga_steps (saga_id, step, status, at) VALUES (?, 'reserve_stock', 'DONE', ?)",
              (order, now))
    o.execute("COMMIT")
    c["users"].execute("SELECT * FROM addresses WHERE id = ? AND user_id = ?",
                       (_ids["address"], _ids["user"])).fetchone()
    pay.execute("BEGIN IMMEDIATE")
    payment = uuid.uuid4().bytes
    pay.execute("INSERT INTO payments VALUES (?, ?, 2000, 'AUTHORIZED', 'ref')", (payment, order))
    pay.execute("INSERT INTO inbox VALUES ('payments.take_payment', ?)", (uuid.uuid4().bytes,))
    pay.execute("COMMIT")
    pay.execute("BEGIN IMMEDIATE")
    pay.execute("UPDATE payments SET status = 'CAPTURED' WHERE id = ?", (payment,))
    message = uuid.uuid4().bytes
    pay.execute("INSERT INTO outbox VALUES (?, ?, ?)", (message, b"x" * 300, now))
    pay.execute("COMMIT")
    pay.execute("DELETE FROM outbox WHERE id = ?", (message,))
    o.execute("BEGIN IMMEDIATE")
    o.execute("UPDATE orders SET status = 'COMPLETED', updated_at = ? WHERE id = ?", (now, order))
    o.execute("UPDATE sagas SET status = 'COMPLETED', version = version + 1 WHERE id = ?", (order,))
    o.execute("COMMIT")
    cat.execute("BEGIN IMMEDIATE")
    for product in (n % 20, (n + 7) % 20):
        cat.execute("UPDATE products SET stock = stock - 2, reserved = reserved - 2 WHERE id = ?", (product,))
    cat.execute("UPDATE reservations SET status = 'COMMITTED' WHERE id = ?", (order,))
    cat.execute("INSERT INTO inbox VALUES ('catalog.commit_stock', ?)", (uuid.uuid4().bytes,))
    cat.execute("COMMIT")
    dlv.execute("BEGIN IMMEDIATE")
    dlv.execute("INSERT INTO deliveries VALUES (?, ?, 'PREPARING', '{}')", (uuid.uuid4().bytes, order))
    dlv.execute("INSERT INTO inbox VALUES ('delivery.prepare_delivery', ?)", (uuid.uuid4().bytes,))
    dlv.execute("COMMIT")


def floor(n: int = 2000, rounds: int = 5) -> tuple[float, float]:
    """(CPU ms, wall ms) per order: the median of `rounds` rounds of n / rounds orders each,
    after 100 warm-up orders. One round's mean moves by 15-25% from the next on a 2-vCPU
    machine shared with other work (seen: 0.43 to 0.65 ms in one hour); the median of five
    moves by a few percent, so the shop's multiple of it is not the floor's noise."""
    per_round = max(1, n // rounds)
    cpus, walls = [], []
    with tempfile.TemporaryDirectory(prefix="shop-floor-") as tmp:
        conns = _open(Path(tmp))
        for i in range(100):
            _one_order(conns, i)
        done = 100
        for _ in range(rounds):
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(done, done + per_round):
                _one_order(conns, i)
            cpus.append((time.process_time() - cpu) / per_round * 1e3)
            walls.append((time.perf_counter() - wall) / per_round * 1e3)
            done += per_round
        for conn in set(conns.values()):
            conn.close()
    return statistics.median(cpus), statistics.median(walls)


def _call(x: int) -> int:
    return x


def machine(loops: int = 200_000) -> tuple[float, float]:
    """(µs a system call, ns a Python function call), the best of five rounds each: what the
    machine charges for the two things an order is made of besides SQLite's own work (the
    floor). A system call is os.getpid(), which glibc does not cache. The same commit of the
    shop took 3.0-3.35 ms of CPU an order on one 2-vCPU machine and 5.4-6.7 ms on another, and
    its floor 0.22-0.25 and 0.5-0.8 ms (ADR 0032): absolute figures of two machines compare
    only next to these."""
    getpid, call = os.getpid, _call
    syscall, python = [], []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(loops):
            getpid()
        syscall.append((time.perf_counter() - started) / loops * 1e6)
        started = time.perf_counter()
        for i in range(loops):
            call(i)
        python.append((time.perf_counter() - started) / loops * 1e9)
    return min(syscall), min(python)


if __name__ == "__main__":
    cpu_ms, wall_ms = floor()
    print(f"floor: {cpu_ms:.3f} ms CPU / {wall_ms:.3f} ms wall per order ({1000 / wall_ms:,.0f} orders/s)")
