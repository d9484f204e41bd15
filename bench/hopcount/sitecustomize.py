"""A diagnostic for bench/orders.py --count-hops: counts aiosqlite thread hand-offs ("hops").

Loaded by the interpreter at start-up (`sitecustomize`) in the shop processes that bench/orders.py
starts with this directory on PYTHONPATH and SHOP_BENCH_HOPCOUNT_DIR set. Every call that
aiosqlite hands to a connection's thread (cursor, execute, fetchall, close, commit, rollback,
connect, ...) is counted by its function name and, for execute, the SQL verb (BEGIN, SELECT,
INSERT, ...). A daemon thread writes the totals of each process to `<dir>/<pid>.tsv` every 0.2 s
(restarted in forked workers). Without SHOP_BENCH_HOPCOUNT_DIR this file does nothing.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Any

_DIR = os.environ.get("SHOP_BENCH_HOPCOUNT_DIR")


def _install(directory: str) -> None:
    import aiosqlite.core

    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    original: Any = aiosqlite.core.Connection._execute
    original_connect: Any = aiosqlite.core.Connection._connect

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(getattr(fn, "func", fn), "__name__", "?")
        verb = (
            args[0].split(None, 1)[0].upper() if args and isinstance(args[0], str) and args[0].strip() else ""
        )
        counts[(name, verb)] += 1
        return await original(self, fn, *args, **kwargs)

    async def connecting(self: Any) -> Any:
        counts[("connect", "")] += 1
        return await original_connect(self)

    aiosqlite.core.Connection._execute = counting  # type: ignore[method-assign]
    aiosqlite.core.Connection._connect = connecting  # type: ignore[method-assign]

    def write() -> None:
        path = os.path.join(directory, f"{os.getpid()}.tsv")
        while True:
            time.sleep(0.2)
            snapshot = list(counts.items())
            with open(path + ".tmp", "w") as f:
                f.writelines(f"{n}\t{name}\t{verb}\n" for (name, verb), n in snapshot)
            os.replace(path + ".tmp", path)

    def start_writer() -> None:
        threading.Thread(target=write, name="hopcount", daemon=True).start()

    start_writer()
    os.register_at_fork(after_in_child=start_writer)


if _DIR:
    with contextlib.suppress(ImportError):  # a process without aiosqlite: nothing to count
        _install(_DIR)
