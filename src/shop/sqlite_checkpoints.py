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
a checkpoint fsyncs what it copies. If the thread stopped, the WAL would only grow; the last
connection to close a file checkpoints it, as always.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

INTERVAL_S = 0.2


class Checkpointer:
    """The process's checkpoint thread and the files it keeps checkpointed (counted: several
    Database objects may share a file)."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._files: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs = 0  # checkpoints run (for tests and curiosity)

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
        connections: dict[str, sqlite3.Connection] = {}
        while True:
            time.sleep(self.interval_s)
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
