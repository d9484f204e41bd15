"""A consumer process for test_dramatiq_transport: one module, "crashy", on the Dramatiq transport.

    python tests/integration/dramatiq_consumer.py REDIS_URL NAMESPACE SQLITE_PATH hang|normal

Its handler for `CrashJob` prints `handling <job>`; in `hang` mode it then sleeps (the test kills
the process there with SIGKILL), in `normal` mode it records the job in the `jobs` table, with the
inbox making that happen once. Short heartbeat timeout and maintenance on every fetch, so the
messages of a killed consumer come back within seconds. Prints `ready` once consuming; SIGTERM
stops it gracefully. Protocol lines go to stdout, logs to stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.bus import Bus
from shop.bus.messages import Command
from shop.bus.module import Module
from shop.bus.transports.dramatiq import DramatiqTransport
from shop.db import Database
from shop.observability import logging as shop_logging

HEARTBEAT_TIMEOUT_MS = 1000


class CrashJob(Command, frozen=True, kw_only=True):
    job: str


jobs_md = sa.MetaData(schema="crashy")
jobs = sa.Table(
    "jobs",
    jobs_md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(50), nullable=False),
)


def build_module(mode: str) -> Module:
    module = Module("crashy", metadata=jobs_md)

    @module.handles(CrashJob)
    async def do_job(cmd: CrashJob, session: AsyncConnection) -> None:
        print(f"handling {cmd.job}", flush=True)
        if mode == "hang":
            await asyncio.sleep(120)
        await session.execute(jobs.insert().values(job=cmd.job))

    return module


async def main(redis_url: str, namespace: str, path: str, mode: str) -> None:
    database = Database("crashy", f"sqlite+aiosqlite:///{path}")
    transport = DramatiqTransport(
        redis_url,
        namespace=namespace,
        worker_threads=2,
        heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=1_000_000,
        idle_block_s=0.2,
        shutdown_timeout_s=5,
    )
    bus = Bus([build_module(mode)], transport, local=["crashy"], databases={"crashy": database})
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await bus.start()
    print("ready", flush=True)
    await stopping.wait()
    await bus.stop()
    await database.dispose()
    print("stopped", flush=True)


if __name__ == "__main__":
    shop_logging.configure("WARNING", stream=sys.stderr)
    asyncio.run(main(*sys.argv[1:5]))
