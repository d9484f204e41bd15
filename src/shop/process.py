"""Process hygiene for server workers."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
ENV_FLAG = "SHOP_DIE_WITH_PARENT"
GC_FREEZE_FLAG = "SHOP_GC_FREEZE"
GC_GEN0_THRESHOLD = 10_000


def die_with_parent() -> None:
    """In a server worker started by `shop run|serve|gateway`: end when the server process dies.

    granian runs the app in a worker process; if a supervisor kills only the main process
    (SIGKILL), the orphaned worker would keep the port, the SQLite files and its discovery
    heartbeat. Linux delivers SIGTERM to the worker when its parent dies; elsewhere a no-op."""
    if os.environ.get(ENV_FLAG) != "1" or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover
        return
    if os.getppid() == 1:  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def freeze_heap_after_start() -> None:
    """In a server worker (`shop run|serve|gateway` set SHOP_GC_FREEZE=1): once the app has
    started, move every object it made so far (modules, tables, compiled statements, routes:
    ~160,000 objects) out of the cyclic garbage collector's sight with `gc.freeze()`. The
    collections that requests' allocations trigger then scan only what requests made: measured
    ~10% of a catalog read's CPU. Never in tests, which start many apps in one process (what
    a frozen app leaves behind in cycles would never be collected).

    It also collects the youngest generation every GC_GEN0_THRESHOLD allocations instead of
    CPython's 700: an order allocates tens of thousands of short-lived objects, and at 700 the
    collections took ~0.5 ms of an order's ~4 ms in one process (bench/orders_inprocess.py with
    a gc callback); at 10,000, a quarter of that. Through `shop run` the difference stayed inside
    the machine's noise (ADR 0029). Memory: the cycles waiting for a collection are at most that
    many objects more (see the RSS line of orders-wrk)."""
    if os.environ.get(GC_FREEZE_FLAG) == "1":
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
