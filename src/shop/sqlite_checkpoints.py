"""WAL checkpoints off the event loop: one daemon thread per process checkpoints every SQLite
file a `shop.db.Database` of the process has open.

By default the connection whose commit pushes the WAL past 1000 pages runs the checkpoint inside
that commit: it copies the pages into the database file and fsyncs both (synchronous=NORMAL),
4 to 20 ms on this machine class, on the event loop (the writers run there, see
`shop.sqlite_onloop`). Measured on the orders benchmark: commits took 34 µs at the median and
4 ms at p99, a mean of 143 µs, the checkpoints' fsyncs. So the shop's connections turn the
automatic checkpoint off (`PRAGMA wal_autocheckpoint=0`, set in `shop.db`) and this thread runs
a PASSIVE checkpoint of each file every `INTERVAL_S`: it never waits for a lock, never blocks a
writer (writers append to the WAL while it copies), and SQLite releases the GIL while it works.

Durability is unchanged: a commit is in the WAL either way (not fsynced, synchronous=NORMAL), and
a checkpoint fsyncs what it copies. The shop's connections keep an automatic checkpoint far out
(`AUTOCHECKPOINT_PAGES`) as a bound should the thread stall; the last connection to close a
file checkpoints it, as always.

Never across a fork (the first try of this, reverted, did): SQLite keeps per-process lock state
for each file its connections have open, and a child that inherits a connection opened before
the fork (here: a server's master process, which builds the app and then forks its workers)
takes its own read locks wrongly, so another process can reset the WAL under it and it reads
stale rows. So a file is watched only from the process that opened its writer (`Database.writer`,
on the running loop, after any fork), and a forked child forgets the parent's thread and keeps
its connections unused and unclosed (closing them would drop the child's locks on the file).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

INTERVAL_S = 0.2
AUTOCHECKPOINT_PAGES = 20_000  # ~80 MB of WAL: reached only if the thread stalls
_ABANDONED: list[object] = []  # connections a forked child inherited: never used, never closed


class Checkpointer:
    """The process's checkpoint thread and the files it keeps checkpointed (counted: several
    Database objects may share a file)."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._files: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connections: dict[str, sqlite3.Connection] = {}  # the thread's own
        self.runs = 0  # checkpoints run (for tests and curiosity)

    def forget_after_fork(self) -> None:
        """In a forked child: no thread, no files; the inherited connections left alone."""
        _ABANDONED.append(self._connections)
        self._connections = {}
        self._files = {}
        self._lock = threading.Lock()
        self._thread = None

    def add(self, path: str) -> None:
        with self._lock:
            self._files[path] = self._files.get(path, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="shop-sqlite-checkpoints", daemon=True)
                self._thread.start()

    def remove(self, path: str) -> None:
        with self._lock:
            left = self._files.get(path, 0) - 1
            if left > 0:
                self._files[path] = left
            else:
                self._files.pop(path, None)

    def watched(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def _run(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            time.sleep(self.interval_s)
            connections = self._connections
            files = self.watched()
            for path in [p for p in connections if p not in files]:
                connections.pop(path).close()
            for path in files:
                self._checkpoint(connections, path)

    def _checkpoint(self, connections: dict[str, sqlite3.Connection], path: str) -> None:
        try:
            conn = connections.get(path)
            if conn is None:
                if not Path(path).exists():
                    return
                # mode=rw: never create a file that was removed meanwhile
                conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=0")
                connections[path] = conn
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.runs += 1
        except sqlite3.Error:
            conn = connections.pop(path, None)
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


CHECKPOINTS = Checkpointer()
os.register_at_fork(after_in_child=CHECKPOINTS.forget_after_fork)
