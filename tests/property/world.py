"""The shop under test as five separate services on a fault-injecting network.

`World` copies a seeded template (customers, addresses, products) into a fresh data dir,
builds one `Shop` per module (as `shop serve <module>` would), each on its own SQLite files,
all on one `Network` and one virtual clock, and a payment provider that can be told to fail,
hang or lose its answer per call. It can crash a module (its tasks die, its memory is gone,
its database stays) and start it again. `violations()` reads every module's database and the
provider's ledger and returns what breaks an invariant; `quiescence_violations()` what breaks
the promises for a system that has had time to settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from shop import migrate
from shop.app import Shop, build_shop
from shop.bus import inbox as inbox_module
from shop.bus.messages import Envelope, decode_body, new_envelope
from shop.bus.saga import COMPENSATION_FAILED, is_final
from shop.bus.tables import dead_letters, outbox, saga_instances, saga_steps
from shop.contracts.catalog import CreateProduct, Line, ProductView, ReserveStock
from shop.contracts.users import AddAddress, AddressView, RegisterUser, UserView
from shop.db import Database, current_unit_of_work, unit_of_work
from shop.modules.catalog.models import products, reservation_lines, reservations
from shop.modules.delivery.models import deliveries
from shop.modules.orders.models import orders
from shop.modules.orders.saga import OrderSagas, reservation_id
from shop.modules.payments.models import payments
from shop.modules.payments.provider import PaymentProvider, ProviderError, ProviderResult
from shop.modules.payments.simulated import REF_PREFIX, SimulatedProvider
from shop.observability import metrics
from shop.settings import MODULE_NAMES, Settings

from .network import Network, VirtualClock

PRODUCTS = 3
INITIAL_STOCK = 4
CUSTOMERS = 2
PAYMENT_DEADLINE_S = 120.0
PROVIDER_TIMEOUT_S = 0.02

ORDER_GRAPH = {
    "PENDING": {"AWAITING_PAYMENT", "COMPLETED", "FAILED", "CANCELLED"},
    "AWAITING_PAYMENT": {"COMPLETED", "FAILED", "CANCELLED"},
    "COMPLETED": {"CANCELLED"},
    "FAILED": set(),
    "CANCELLED": set(),
}
SAGA_GRAPH = {
    "RUNNING": {"WAITING", "COMPENSATING", "COMPLETED", "FAILED", "CANCELLED", "COMPENSATION_FAILED"},
    "WAITING": {"RUNNING", "COMPENSATING", "COMPLETED", "FAILED", "CANCELLED", "COMPENSATION_FAILED"},
    "COMPENSATING": {"FAILED", "CANCELLED", "COMPENSATION_FAILED"},
    "COMPENSATION_FAILED": {"COMPENSATING", "FAILED", "CANCELLED"},
    "COMPLETED": set(),
    "FAILED": set(),
    "CANCELLED": set(),
}
DELIVERY_GRAPH = {
    "PREPARING": {"SHIPPED", "CANCELLED"},
    "SHIPPED": {"IN_TRANSIT"},
    "IN_TRANSIT": {"DELIVERED"},
    "DELIVERED": set(),
    "CANCELLED": set(),
}


def _closure(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    reach = {state: set(targets) for state, targets in graph.items()}
    changed = True
    while changed:
        changed = False
        for targets in reach.values():
            more = set().union(*(reach.get(t, set()) for t in targets)) - targets
            if more:
                targets |= more
                changed = True
    return reach


ORDER_REACH = _closure(ORDER_GRAPH)
SAGA_REACH = _closure(SAGA_GRAPH)
DELIVERY_REACH = _closure(DELIVERY_GRAPH)


# -- the payment provider -----------------------------------------------------------------


class FaultyProvider:
    """The simulated provider (idempotent by key, a ledger of the money it moved) behind faults
    the test queues: `fail` (a server error before anything happens), `hang` (no answer until
    the caller's timeout), `lost_reply` (the operation happens, the answer never arrives)."""

    name = "simulated"

    def __init__(self) -> None:
        self.inner = SimulatedProvider()
        self.faults: list[str] = []
        self.injected: Counter[str] = Counter()
        self.payment_of_ref: dict[str, str] = {}  # authorization ref -> payments row id

    async def _call(self, fn: Callable[[], Awaitable[ProviderResult]]) -> ProviderResult:
        fault = self.faults.pop(0) if self.faults else "ok"
        self.injected[fault] += 1
        if fault == "fail":
            raise ProviderError("injected: 500 from the provider")
        if fault == "hang":
            await asyncio.Event().wait()  # the caller's timeout ends this
        result = await fn()
        if fault == "lost_reply":
            raise TimeoutError("injected: the provider's answer was lost")
        return result

    async def authorize(self, idempotency_key: str, amount: int, currency: str, token: str) -> ProviderResult:
        async def run() -> ProviderResult:
            result = await self.inner.authorize(idempotency_key, amount, currency, token)
            if result.approved and result.provider_ref:
                self.payment_of_ref[result.provider_ref] = idempotency_key.split(":")[0]
            return result

        return await self._call(run)

    async def capture(self, idempotency_key: str, authorization_ref: str) -> ProviderResult:
        return await self._call(lambda: self.inner.capture(idempotency_key, authorization_ref))

    async def void(self, idempotency_key: str, ref: str) -> ProviderResult:
        return await self._call(lambda: self.inner.void(idempotency_key, ref))

    async def refund(self, idempotency_key: str, ref: str, amount: int) -> ProviderResult:
        return await self._call(lambda: self.inner.refund(idempotency_key, ref, amount))


# -- the seeded template ------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """What every program starts with."""

    customers: tuple[uuid.UUID, ...]
    addresses: tuple[uuid.UUID, ...]  # addresses[i] belongs to customers[i]
    products: tuple[uuid.UUID, ...]
    prices: tuple[int, ...]


def settings_for(data_dir: Path) -> Settings:
    return Settings.from_env(
        {},
        data_dir=data_dir,
        payment_provider_timeout_s=PROVIDER_TIMEOUT_S,
        payment_deadline_s=PAYMENT_DEADLINE_S,
        log_level="CRITICAL",
    )


async def build_template(data_dir: Path) -> Seed:
    """Migrate every module's database into `data_dir` and seed it, through the bus."""
    settings = settings_for(data_dir)
    await migrate.upgrade(settings, MODULE_NAMES)
    shop = build_shop(settings)
    await shop.start(background=False)
    try:
        customers, addresses, product_ids, prices = [], [], [], []
        for n in range(CUSTOMERS):
            user = await shop.bus.ask(
                RegisterUser(email=f"c{n}@example.com", password="correct horse battery", name=f"C{n}")
            )
            assert isinstance(user, UserView), user
            address = await shop.bus.ask(
                AddAddress(
                    user_id=user.id,
                    recipient=f"C{n}",
                    line1="Main 1",
                    line2=None,
                    city="Berlin",
                    postal_code="10115",
                    country="DE",
                )
            )
            assert isinstance(address, AddressView), address
            customers.append(user.id)
            addresses.append(address.id)
        for n in range(PRODUCTS):
            product = await shop.bus.ask(
                CreateProduct(
                    sku=f"SKU-{n}",
                    name=f"Product {n}",
                    description="",
                    price=1000 * (n + 1),
                    currency="EUR",
                    category=None,
                    stock=INITIAL_STOCK,
                )
            )
            assert isinstance(product, ProductView), product
            product_ids.append(product.id)
            prices.append(product.price)
    finally:
        await shop.stop()
    return Seed(tuple(customers), tuple(addresses), tuple(product_ids), tuple(prices))


# -- the world ----------------------------------------------------------------------------


@dataclass
class Observed:
    """The last state seen of each order, saga and delivery (for the transition checks)."""

    orders: dict[uuid.UUID, str] = field(default_factory=dict)
    sagas: dict[uuid.UUID, str] = field(default_factory=dict)
    deliveries: dict[uuid.UUID, str] = field(default_factory=dict)


class EffectLedger:
    """Every (consumer, message id) whose handler's effect committed; a second one is a violation."""

    def __init__(self) -> None:
        self.committed: Counter[tuple[str, uuid.UUID]] = Counter()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        original = inbox_module.record

        async def record(session: Any, consumer: str, message_id: uuid.UUID, reply: bytes | None) -> None:
            await original(session, consumer, message_id, reply)
            uow = current_unit_of_work()
            if uow is not None:

                async def committed() -> None:
                    self.committed[(consumer, message_id)] += 1

                uow.after_commit(committed)

        inbox_module.record = record  # type: ignore[assignment]
        try:
            yield
        finally:
            inbox_module.record = original  # type: ignore[assignment]


class World:
    def __init__(self, template: Path, data_dir: Path, seed: Seed, network: Network) -> None:
        shutil.copytree(template, data_dir)
        self.seed = seed
        self.data_dir = data_dir
        self.settings = settings_for(data_dir)
        self.network = network
        self.clock: VirtualClock = network.clock
        self.provider = FaultyProvider()
        self.shops: dict[str, Shop] = {}
        self.readers = {m: Database(m, self.settings.database_url_for(m)) for m in MODULE_NAMES}
        self.timers: asyncio.Task[Any] | None = None
        self.clients: set[asyncio.Task[Any]] = set()
        self.restocked: Counter[uuid.UUID] = Counter()
        self.order_ids: list[uuid.UUID] = []
        self.order_totals: dict[uuid.UUID, int] = {}
        self.observed = Observed()
        self.effects = EffectLedger()
        self.poisoned: set[uuid.UUID] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, module: str) -> None:
        shop = build_shop(
            self.settings,
            local=[module],
            transport=self.network.endpoint(module),
            clock=self.clock,
            overrides={PaymentProvider: self.provider},
        )
        await shop.start(background=False)
        self.shops[module] = shop
        if module == "orders":
            # What the module's background task does after its start-up grace.
            self.timers = asyncio.get_running_loop().create_task(self.sagas.engine.resume_all())

    async def crash(self, module: str) -> None:
        """The module's process dies: tasks cancelled mid-flight, memory lost, database kept.
        Nothing is flushed: delivered outbox rows not yet deleted are relayed again later."""
        shop = self.shops.pop(module)
        tasks: list[asyncio.Task[Any]] = []
        relay = shop.bus.relay
        tasks.extend(relay._tasks)
        tasks.extend(t for t in (relay._flusher, relay._sweeper) if t is not None)
        if module == "orders":
            engine = self._sagas_of(shop).engine
            tasks.extend(engine.background_tasks)
            if self.timers is not None:
                tasks.append(self.timers)
                self.timers = None
            for client in self.clients:
                tasks.append(client)  # the requests this process was serving
        for task in tasks:
            task.cancel()
        await shop.bus.transport.stop()  # the network forgets it: its handlers die, its asks too
        await asyncio.gather(*tasks, return_exceptions=True)
        for database in shop.databases.values():
            await database.dispose()
        # The process's /metrics dies with it: drop the readers it registered.
        metrics.off_scrape(f"shop:{id(shop)}")
        metrics.off_scrape(f"sagas:{id(shop)}")

    async def stop_all(self) -> None:
        for module in list(self.shops):
            with contextlib.suppress(Exception):
                await self.crash(module)
        for database in self.readers.values():
            await database.dispose()

    @property
    def sagas(self) -> OrderSagas:
        return self._sagas_of(self.shops["orders"])

    @staticmethod
    def _sagas_of(shop: Shop) -> OrderSagas:
        sagas: OrderSagas = shop.bus.injector_for("orders").resolve(OrderSagas)
        return sagas

    def up(self, module: str) -> bool:
        return module in self.shops

    # -- what clients and operators do -------------------------------------------------------

    async def client(self, coroutine: Awaitable[Any], label: str, log: Callable[[str], None]) -> None:
        """A request to a module, running until its answer (it may wait on other modules)."""

        async def run() -> None:
            try:
                result = await coroutine
            except asyncio.CancelledError:
                log(f"{label} -> interrupted")
                raise
            except Exception as exc:
                log(f"{label} -> {type(exc).__name__}")
            else:
                log(f"{label} -> {summarize(result)}")

        task = asyncio.get_running_loop().create_task(run())
        self.clients.add(task)
        task.add_done_callback(self.clients.discard)

    def tick(self) -> None:
        """The orders timer loop's next pass, unless the last one is still busy."""
        if "orders" in self.shops and (self.timers is None or self.timers.done()):
            self.timers = asyncio.get_running_loop().create_task(self.sagas.engine.tick())

    async def sweep(self) -> None:
        """Every live module's periodic outbox sweep."""
        for shop in self.shops.values():
            await shop.bus.relay.sweep(grace=0.0)

    async def poison(self) -> uuid.UUID:
        """A ReserveStock whose body no handler can decode: it must end in the dead letters."""
        envelope = new_envelope(
            ReserveStock(
                reservation_id=uuid.uuid4(),
                order_id=uuid.uuid4(),
                lines=(Line(product_id=uuid.uuid4(), quantity=1),),
            ),
            sender="orders",
            consumer="catalog.reserve_stock",
        )
        envelope = msgspec.structs.replace(envelope, body=b"\xc1poison")
        self.poisoned.add(envelope.message_id)
        self.network.send("orders", "catalog", envelope, 0.0)
        return envelope.message_id

    # -- reading the databases ---------------------------------------------------------------

    async def _rows(self, module: str, query: Any) -> list[Any]:
        async with unit_of_work(self.readers[module], write=False) as uow:
            return list((await uow.session.execute(query)).all())

    async def violations(self) -> list[str]:
        """Every invariant broken right now."""
        found: list[str] = []
        order_rows = await self._rows("orders", sa.select(orders.c.id, orders.c.status, orders.c.total))
        saga_rows = await self._rows(
            "orders", sa.select(saga_instances.c.id, saga_instances.c.type, saga_instances.c.status)
        )
        place = {row.id: row.status for row in saga_rows if row.type == "place_order"}
        step_rows = await self._rows(
            "orders",
            sa.select(saga_steps.c.saga_id, saga_steps.c.step, saga_steps.c.status).order_by(saga_steps.c.id),
        )
        product_rows = await self._rows(
            "catalog", sa.select(products.c.id, products.c.on_hand, products.c.reserved)
        )
        reservation_rows = await self._rows(
            "catalog",
            sa.select(
                reservations.c.id,
                reservations.c.order_id,
                reservations.c.status,
                reservation_lines.c.product_id,
                reservation_lines.c.quantity,
            ).join(reservation_lines, reservation_lines.c.reservation_id == reservations.c.id),
        )
        payment_rows = await self._rows(
            "payments",
            sa.select(payments.c.id, payments.c.order_id, payments.c.status, payments.c.provider_ref),
        )
        delivery_rows = await self._rows("delivery", sa.select(deliveries.c.order_id, deliveries.c.status))

        # Stock: initial + restocked = available + reserved + committed; nothing negative.
        held: Counter[uuid.UUID] = Counter()
        committed: Counter[uuid.UUID] = Counter()
        per_order_product: Counter[tuple[uuid.UUID, uuid.UUID]] = Counter()
        for row in reservation_rows:
            if row.status == "RESERVED":
                held[row.product_id] += row.quantity
            elif row.status == "COMMITTED":
                committed[row.product_id] += row.quantity
            if row.status in ("RESERVED", "COMMITTED"):
                per_order_product[(row.order_id, row.product_id)] += 1
        for product in product_rows:
            available = product.on_hand - product.reserved
            total = INITIAL_STOCK + self.restocked[product.id]
            if available < 0 or product.reserved < 0:
                found.append(
                    f"stock of {product.id} is negative: {available} available, {product.reserved} reserved"
                )
            if available + product.reserved + committed[product.id] != total:
                found.append(
                    f"stock of {product.id} not conserved: {available} available"
                    f" + {product.reserved} reserved"
                    f" + {committed[product.id]} committed != {total}"
                )
            if product.reserved != held[product.id]:
                found.append(
                    f"{product.id}: reserved column {product.reserved} != reservations {held[product.id]}"
                )
        # Reservations: each belongs to exactly one live saga; at most one per (order, product).
        for (order_id, product_id), count in per_order_product.items():
            if count > 1:
                found.append(f"order {order_id} holds {count} reservations of {product_id}")
        for row in reservation_rows:
            if row.status != "RESERVED":
                continue
            if row.id != reservation_id(row.order_id):
                found.append(f"reservation {row.id} is not the saga's key for order {row.order_id}")
            saga_status = place.get(row.order_id)
            if saga_status is None or saga_status in ("FAILED", "CANCELLED"):
                found.append(f"reservation {row.id} is held for a saga that is {saga_status}")

        # Money: at most one capture per order; refunds never exceed captures.
        order_of_payment = {str(row.id): row.order_id for row in payment_rows}
        captures: Counter[uuid.UUID] = Counter()
        for ref, auth in self.provider.inner.authorizations.items():
            if auth.refunded > auth.captured:
                found.append(f"authorization {ref} refunded {auth.refunded} > captured {auth.captured}")
            if auth.captured:
                order_id = order_of_payment.get(self.provider.payment_of_ref.get(ref, ""))
                if order_id is None:
                    found.append(f"authorization {ref} captured money for no known payment")
                    continue
                captures[order_id] += 1
                if auth.captured > (self.order_totals.get(order_id) or 0):
                    found.append(f"order {order_id} captured {auth.captured} > its total")
        for order_id, count in captures.items():
            if count > 1:
                found.append(f"order {order_id} was charged {count} times")

        # Transitions along the legal graphs only; final states absorb.
        order_status = {row.id: row.status for row in order_rows}
        self._check_moves(found, "order", self.observed.orders, order_status, ORDER_REACH)
        self._check_moves(
            found, "saga", self.observed.sagas, {row.id: row.status for row in saga_rows}, SAGA_REACH
        )
        delivery_status = {row.order_id: row.status for row in delivery_rows}
        self._check_moves(found, "delivery", self.observed.deliveries, delivery_status, DELIVERY_REACH)

        # Compensations: only for completed steps, in reverse order, each once.
        found.extend(compensation_violations(step_rows))

        # A live delivery implies a captured payment (the order completes from the same event).
        captured_orders = {row.order_id for row in payment_rows if row.status in ("CAPTURED", "REFUNDED")}
        for order_id, status in delivery_status.items():
            if status != "CANCELLED" and order_id not in captured_orders:
                found.append(f"delivery of {order_id} is {status} without a captured payment")

        # Per (consumer, message id) at most one effect.
        for key, count in self.effects.committed.items():
            if count > 1:
                found.append(f"{key[0]} applied message {key[1]} {count} times")
        return found

    @staticmethod
    def _check_moves(
        found: list[str],
        kind: str,
        seen: dict[uuid.UUID, str],
        now: dict[uuid.UUID, str],
        reach: dict[str, set[str]],
    ) -> None:
        for key, status in now.items():
            before = seen.get(key)
            if before is not None and before != status and status not in reach.get(before, set()):
                found.append(f"{kind} {key} moved {before} -> {status}")
            seen[key] = status
        for key in seen.keys() - now.keys():
            found.append(f"{kind} {key} disappeared")

    async def quiescence_violations(self) -> list[str]:
        """What a settled system promises beyond the invariants."""
        found: list[str] = []
        order_rows = await self._rows("orders", sa.select(orders.c.id, orders.c.status, orders.c.total))
        saga_rows = await self._rows("orders", sa.select(saga_instances.c.id, saga_instances.c.status))
        for row in saga_rows:
            if not is_final(row.status):
                found.append(f"saga {row.id} is {row.status} at quiescence")
        reservation_rows = await self._rows(
            "catalog", sa.select(reservations.c.order_id, reservations.c.status)
        )
        reservation_of = {row.order_id: row.status for row in reservation_rows}
        payment_rows = await self._rows("payments", sa.select(payments.c.id, payments.c.order_id))
        order_of_payment = {str(row.id): row.order_id for row in payment_rows}
        net: Counter[uuid.UUID] = Counter()
        for ref, auth in self.provider.inner.authorizations.items():
            order_id = order_of_payment.get(self.provider.payment_of_ref.get(ref, ""))
            if order_id is not None:
                net[order_id] += auth.captured - auth.refunded
            elif auth.captured - auth.refunded:
                found.append(f"authorization {ref} holds {auth.captured - auth.refunded} for no payment")
        delivery_rows = await self._rows("delivery", sa.select(deliveries.c.order_id, deliveries.c.status))
        delivery_of = {row.order_id: row.status for row in delivery_rows}
        for row in order_rows:
            if row.status == "COMPLETED":
                if net[row.id] != row.total:
                    found.append(f"COMPLETED order {row.id} charged {net[row.id]}, total {row.total}")
                if reservation_of.get(row.id) != "COMMITTED":
                    found.append(f"COMPLETED order {row.id} has stock {reservation_of.get(row.id)}")
            elif row.status in ("FAILED", "CANCELLED"):
                if net[row.id]:
                    found.append(f"{row.status} order {row.id} still charged {net[row.id]}")
                if reservation_of.get(row.id) in ("RESERVED", "COMMITTED"):
                    found.append(f"{row.status} order {row.id} still holds stock ({reservation_of[row.id]})")
                if delivery_of.get(row.id) not in (None, "CANCELLED"):
                    found.append(f"{row.status} order {row.id} has a live delivery ({delivery_of[row.id]})")
            else:
                found.append(f"order {row.id} is {row.status} at quiescence")
        for module in MODULE_NAMES:
            left = await self._rows(module, sa.select(sa.func.count()).select_from(outbox))
            if left[0][0]:
                found.append(f"{module}'s outbox still holds {left[0][0]} messages")
            c = dead_letters.c
            dead = await self._rows(module, sa.select(c.message_id, c.message_type, c.error))
            for row in dead:
                if row.message_id not in self.poisoned:
                    error = row.error.strip().splitlines()[-1]
                    found.append(f"{module} dead-lettered {row.message_type} {row.message_id}: {error}")
        return found

    async def outbox_rows(self) -> int:
        """Messages still in any outbox (a live module's sweep relays them)."""
        total = 0
        for module in MODULE_NAMES:
            rows = await self._rows(module, sa.select(sa.func.count()).select_from(outbox))
            total += rows[0][0]
        return total

    async def parked(self) -> list[uuid.UUID]:
        rows = await self._rows(
            "orders", sa.select(saga_instances.c.id).where(saga_instances.c.status == COMPENSATION_FAILED)
        )
        return [row.id for row in rows]

    async def unfinished(self) -> int:
        rows = await self._rows(
            "orders",
            sa.select(sa.func.count())
            .select_from(saga_instances)
            .where(saga_instances.c.status.not_in(("COMPLETED", "FAILED", "CANCELLED"))),
        )
        count: int = rows[0][0]
        return count

    async def statuses(self) -> list[str]:
        """Each order's status, in the order they were placed (for the event log)."""
        rows = await self._rows("orders", sa.select(orders.c.id, orders.c.status))
        status = {row.id: row.status for row in rows}
        return [status.get(order_id, "-") for order_id in self.order_ids]


def compensation_violations(step_rows: list[Any]) -> list[str]:
    """From each saga's timeline: compensations only for steps that were DONE, in reverse
    order of completion, each once."""
    found: list[str] = []
    timelines: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for row in step_rows:
        timelines.setdefault(row.saga_id, []).append((row.step, row.status))
    for saga_id, events in timelines.items():
        done: list[str] = []
        compensated: list[str] = []
        for step, status in events:
            if status == "DONE":
                done.append(step)
            elif status == "COMPENSATED":
                if step not in done:
                    found.append(f"saga {saga_id} compensated {step}, which never completed")
                if step in compensated:
                    found.append(f"saga {saga_id} compensated {step} twice")
                compensated.append(step)
        expected = [step for step in reversed(done) if step in compensated]
        if compensated != expected:
            found.append(f"saga {saga_id} compensated in the order {compensated}, not {expected}")
    return found


def summarize(result: Any) -> str:
    """A reply as the event log records it: its type and status, no ids."""
    if result is None:
        return "None"
    status = getattr(result, "status", None) or getattr(getattr(result, "order", None), "status", None)
    code = getattr(result, "code", None)
    return type(result).__name__ + (f"({status})" if status else "") + (f"({code})" if code else "")


def canonical(envelope: Envelope, names: dict[str, str]) -> str:
    """An envelope as the event log and the delivery order see it: ids replaced by names the
    program gave them, anything else random left out."""
    try:
        body = msgspec.to_builtins(decode_body(envelope.type, envelope.body))
    except Exception:
        body = "undecodable"

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rename(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [rename(v) for v in value]
        if isinstance(value, str) and len(value) == 36 and value.count("-") == 4:
            return names.get(value, "?")
        if isinstance(value, str) and value.startswith(REF_PREFIX):
            return value.rsplit("_", 1)[0]  # the provider's counter, without its random part
        return value

    return f"{envelope.consumer or ''}:{envelope.type}#{envelope.attempt}:{rename(body)}"
