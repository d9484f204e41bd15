"""Sagas are hosted by the composition root for any module that declares them
(`Module.sagas`): the engine is resumed and ticked, closed at shutdown, and the saga admin views
are served (and registered in discovery) only by a process that has such a module."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.datastructures import State
from litestar.types import ASGIApp, Receive, Scope, Send

from shop.app import build_app, build_shop, load_module, served_controllers
from shop.bus.retry import RetryPolicy
from shop.bus.saga import META_KEY, Saga, SagaContext, SagaEngine
from shop.bus.tables import saga_instances
from shop.db import Database, current_unit_of_work, unit_of_work
from shop.gateway.problems import EXCEPTION_HANDLERS
from shop.gateway.sagas import SagaAdminController
from shop.modules.orders.saga import OrderSagas
from shop.security.guards import PRINCIPAL_KEY
from shop.security.tokens import Principal
from shop.settings import Settings


def test_only_a_module_that_declares_sagas_serves_the_saga_admin_views() -> None:
    assert SagaAdminController in served_controllers(load_module("orders"))
    for name in ("users", "catalog", "payments", "delivery"):
        assert SagaAdminController not in served_controllers(load_module(name))


def public_pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def settings_for(tmp_path: Path, **env: str) -> Settings:
    """A service's settings (as `shop serve` has them: the public key, not the users' pair)."""
    return Settings.from_env({"SHOP_DATA_DIR": str(tmp_path), "SHOP_JWT_PUBLIC_KEY": public_pem(), **env})


@contextlib.asynccontextmanager
async def client_of(tmp_path: Path, local: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(tmp_path)
    app = build_app(build_shop(settings, local=local, migrate_on_start=True), rate_limit=False)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test") as client,
    ):
        yield client


async def test_a_process_without_sagas_has_no_saga_admin_views(tmp_path: Path) -> None:
    async with client_of(tmp_path / "catalog", ["catalog"]) as catalog:
        assert (await catalog.get("/api/v1/admin/sagas")).status_code == 404
    async with client_of(tmp_path / "orders", ["orders"]) as orders:
        assert (await orders.get("/api/v1/admin/sagas")).status_code == 401  # there, for admins


async def test_the_shop_resumes_ticks_and_closes_a_modules_saga_engine(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, SHOP_PAYMENT_DEADLINE_S="0.2")
    shop = build_shop(settings, local=["orders"], migrate_on_start=True)
    await shop.start()
    try:
        engine = shop.bus.injector_for("orders").resolve(OrderSagas).engine
        assert shop.saga_engines == {"orders": engine}
        assert (engine.startup_grace, engine.tick_interval) == (0.1, 0.05)  # orders' own timing
        assert "orders:sagas" in {task.get_name() for task in asyncio.all_tasks()}
    finally:
        await shop.stop()
    assert shop.saga_engines == {}
    assert "orders:sagas" not in {task.get_name() for task in asyncio.all_tasks()}
    assert not engine.background_tasks


class Clock:
    now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_serve_resumes_after_the_grace_then_ticks(tmp_path: Path, make_database: Any) -> None:
    database: Database = await make_database("hosted")
    calls: list[str] = []
    failures = [RuntimeError("down")]

    async def flaky(ctx: SagaContext) -> None:
        calls.append(ctx.step)
        if failures:
            raise failures.pop()

    clock = Clock()
    saga = Saga("hosted").step("flaky", flaky)
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0, jitter=0.0)
    first = SagaEngine(database, [saga], clock=clock, retry=policy)
    saga_id = uuid.uuid4()
    async with unit_of_work(database):
        await first.start(saga, saga_id)
    await first.drain()
    await first.close()
    assert calls == ["flaky"]  # failed once: a retry is due in a second

    clock.now += timedelta(seconds=2)
    engine = SagaEngine(database, [saga], clock=clock, retry=policy, tick_interval=0.01, startup_grace=0.05)
    serving = asyncio.create_task(engine.serve())
    try:
        await asyncio.sleep(0.02)
        assert calls == ["flaky"], "nothing is resumed during the start-up grace"
        for _ in range(200):
            state = await engine.get(saga_id)
            if state is not None and state.status == "COMPLETED":
                break
            await asyncio.sleep(0.01)
        assert calls == ["flaky", "flaky"]
        assert state is not None
        assert state.status == "COMPLETED"
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await engine.close()


# -- the saga admin views over several modules' engines -------------------------------------


def admin_app(engines: dict[str, SagaEngine]) -> Litestar:
    """The saga admin views as the composition root mounts them, called by an admin."""

    def as_admin(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            scope[PRINCIPAL_KEY] = Principal(user_id=uuid.uuid4(), role="admin")  # type: ignore[literal-required]
            await app(scope, receive, send)

        return middleware

    return Litestar(
        route_handlers=[SagaAdminController],
        state=State({"saga_engines": engines}),
        middleware=[as_admin],
        exception_handlers=EXCEPTION_HANDLERS,
    )


async def test_the_saga_admin_views_span_every_local_modules_engine(make_database: Any) -> None:
    clock = Clock()
    parked: list[uuid.UUID] = []

    async def ok(ctx: SagaContext) -> None:
        return None

    engines: dict[str, SagaEngine] = {}
    ids: list[uuid.UUID] = []
    for module in ("alpha", "beta"):
        database: Database = await make_database(module)
        engines[module] = SagaEngine(database, [Saga(f"{module}_saga").step("one", ok)], clock=clock)
        for _ in range(3):
            clock.now += timedelta(seconds=1)
            saga_id = uuid.uuid4()
            async with unit_of_work(database):
                await engines[module].start(f"{module}_saga", saga_id)
            await engines[module].drain()
            ids.append(saga_id)
    # a beta saga of a version beta no longer has, past a step it no longer has: parked
    beta = engines["beta"]
    stale = uuid.uuid4()
    clock.now += timedelta(seconds=1)
    async with unit_of_work(beta.database):
        await beta.start("beta_saga", stale)
        await uow_update_version(beta.database, stale, 7)
    await beta.drain()
    parked.append(stale)

    app = admin_app(engines)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop.test"
    ) as client:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/admin/sagas/", params=params)).json()
            seen.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [str(stale), *(str(i) for i in reversed(ids))]  # newest first, across both

        summary = (await client.get("/api/v1/admin/sagas/summary")).json()
        assert summary["by_type"] == {
            "alpha_saga": {"COMPLETED": 3},
            "beta_saga": {"COMPLETED": 3, "PARKED": 1},
        }
        assert summary["by_status"] == {"COMPLETED": 6, "PARKED": 1}

        timeline = (await client.get(f"/api/v1/admin/sagas/{stale}/timeline")).json()["items"]
        assert timeline[-1]["status"] == "PARKED"
        assert (
            timeline[-1]["detail"]
            == "beta_saga v7 is not registered; v1 does not begin with the completed steps gone"
        )
        assert (await client.get(f"/api/v1/admin/sagas/{uuid.uuid4()}/timeline")).status_code == 404

        retried = await client.post(f"/api/v1/admin/sagas/{stale}/retry")
        assert retried.status_code == 202
        assert retried.json()["id"] == str(stale)
        await beta.drain()  # resumed in the background: still no version 7, parked again
        assert (await client.get(f"/api/v1/admin/sagas/{stale}/timeline")).json()["items"][-1][
            "status"
        ] == "PARKED"
        done = await client.post(f"/api/v1/admin/sagas/{ids[0]}/retry")
        assert done.status_code == 409
        assert "the saga is COMPLETED" in done.json()["detail"]
        assert (await client.post(f"/api/v1/admin/sagas/{uuid.uuid4()}/retry")).status_code == 404
    for engine in engines.values():
        await engine.close()


async def uow_update_version(database: Database, saga_id: uuid.UUID, version: int) -> None:
    """Inside the open unit of work: the saga started on definition ``version`` and did a step
    the registered definition does not have."""
    uow = current_unit_of_work()
    assert uow is not None
    c = saga_instances.c
    data = (await uow.session.execute(sa.select(c.data).where(c.id == saga_id))).scalar_one()
    data[META_KEY]["version"] = version
    data[META_KEY]["done"] = ["gone"]  # a step its definition no longer has
    # as every writer of a saga row does: a new version (the engine's optimistic lock)
    await uow.session.execute(
        saga_instances.update().where(c.id == saga_id).values(data=data, version=c.version + 1)
    )
