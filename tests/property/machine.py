"""The order saga as a Hypothesis state machine, under injected faults.

Rules place orders, cancel them, ship them, restock, queue provider faults, deliver /
duplicate / drop messages or lose replies, crash and restart modules, poison a message and
advance the virtual clock. After every step the invariants of `World.violations` must hold; at
teardown the faults are healed, the queues drained and the clock run on until every saga is
final, and the promises of `World.quiescence_violations` must hold too.

Every program keeps an event log (rules, what was delivered, how the orders stand) with ids
replaced by the names the program gave them; the same seed gives the same log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shop.contracts.catalog import AdjustStock, Line, ProductView
from shop.contracts.delivery import RecordDeliveryEvent
from shop.contracts.orders import CancelOrder, OrderPlaced, PlaceOrder
from shop.modules.delivery.models import deliveries
from shop.modules.orders.saga import cancel_saga_id, payment_id, reservation_id
from shop.observability import metrics
from shop.settings import MODULE_NAMES

from .network import (
    Forwarder,
    InProcessForwarder,
    Network,
    VirtualClock,
)
from .world import Seed, World, build_template, canonical

MAX_ORDERS = 6
MAX_CRASHES = 4
ADVANCES = (0.1, 1.0, 5.0, 30.0, 61.0, 130.0)
QUIESCE_ROUNDS = 600


@dataclass
class Totals:
    """What a profile ran, summed over its programs."""

    programs: int = 0
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    hashes: list[str] = field(default_factory=list)
    logs: list[list[str]] = field(default_factory=list)

    def line(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return f"{self.programs} programs, {self.steps} steps, faults: {faults}; violations {self.violations}"


class _Template:
    """The seeded databases every program copies (built once per process and transport)."""

    path: Path | None = None
    seed: Seed | None = None

    @classmethod
    def get(cls) -> tuple[Path, Seed]:
        if cls.path is None or cls.seed is None:
            path = Path(tempfile.mkdtemp(prefix="shop-property-template-")) / "data"
            cls.seed = asyncio.run(build_template(path))
            cls.path = path
        return cls.path, cls.seed


class OrderSagaMachine(RuleBasedStateMachine):
    """Subclasses name the transport that carries the deliveries (`make_forwarder`)."""

    totals: ClassVar[Totals] = Totals()
    on_finish: ClassVar[Callable[[str], None] | None] = None

    def make_forwarder(self) -> tuple[Forwarder, bool]:
        return InProcessForwarder(), False

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="shop-property-"))
        template, self.seed = _Template.get()
        forwarder, durable = self.make_forwarder()
        self.network = Network(VirtualClock(), forwarder, durable=durable)
        self.world = World(template, self.workdir / "data", self.seed, self.network)
        self.stack.enter_context(self.world.effects.watching())
        self.events: list[str] = []
        self.names: dict[str, str] = {}
        for prefix, ids in (
            ("c", self.seed.customers),
            ("a", self.seed.addresses),
            ("p", self.seed.products),
        ):
            for n, value in enumerate(ids):
                self.names[str(value)] = f"{prefix}{n}"
        self.scrape_hooks_before = set(metrics._scrape_hooks)
        self.crashes = 0
        self.run_statuses: list[str] = []
        self.steps = 0
        self.failed = False
        self.poisoned = False

    # -- plumbing ----------------------------------------------------------------------------

    def log(self, line: str) -> None:
        self.events.append(line)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def settle(self) -> None:
        self.run(self.network.settle())
        self.log("  orders: " + " ".join(self.run(self.world.statuses())))

    def name_order(self, order_id: uuid.UUID) -> None:
        n = len(self.world.order_ids)
        self.world.order_ids.append(order_id)
        for prefix, value in (
            ("o", order_id),
            ("r", reservation_id(order_id)),
            ("pay", payment_id(order_id)),
            ("x", cancel_saga_id(order_id)),
        ):
            self.names[str(value)] = f"{prefix}{n}"

    def run_client(self, coroutine: Any, label: str, log: Callable[[str], None]) -> None:
        self.run(self.world.client(coroutine, label, log))

    def pending(self) -> list[Any]:
        items = self.network.deliverable()
        return sorted(items, key=lambda p: (canonical(p.envelope, self.names), p.is_request, p.seq))

    def describe(self, item: Any) -> str:
        return ("ask " if item.is_request else "") + f"{item.queue} {canonical(item.envelope, self.names)}"

    def step(self) -> None:
        self.steps += 1

    # -- set-up ------------------------------------------------------------------------------

    @initialize()
    def boot(self) -> None:
        async def boot() -> None:
            for module in MODULE_NAMES:
                await self.world.start(module)

        self.run(boot())
        self.settle()

    # -- what clients and operators do -------------------------------------------------------

    @precondition(lambda self: self.world.up("orders") and len(self.world.order_ids) < MAX_ORDERS)
    @rule(
        customer=st.integers(0, 1),
        lines=st.lists(
            st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=2, unique_by=lambda t: t[0]
        ),
        token=st.sampled_from(["tok_ok", "tok_ok", "tok_ok", "tok_decline"]),
        others_address=st.booleans(),
        provider=st.lists(st.sampled_from(["ok", "ok", "fail", "hang", "lost_reply"]), max_size=3),
    )
    def place_order(
        self,
        customer: int,
        lines: list[tuple[int, int]],
        token: str,
        others_address: bool,
        provider: list[str] | None = None,
    ) -> None:
        self.step()
        seed = self.seed
        address = seed.addresses[1 - customer if others_address else customer]
        items = tuple(Line(product_id=seed.products[p], quantity=q) for p, q in lines)
        total = sum(seed.prices[p] * q for p, q in lines)
        label = f"place c{customer} {lines} {token} {'foreign' if others_address else 'own'} address"
        self.log(label + (f", provider next: {provider}" if provider else ""))
        self.world.provider.faults.extend(provider or [])
        bus = self.world.shops["orders"].bus

        async def place() -> Any:
            reply = await bus.ask(
                PlaceOrder(
                    customer_id=seed.customers[customer], items=items, address_id=address, payment_token=token
                )
            )
            if isinstance(reply, OrderPlaced):
                self.name_order(reply.order.id)
                self.world.order_totals[reply.order.id] = total
            return reply

        self.run_client(place(), label, self.log)
        self.settle()

    @precondition(lambda self: self.world.up("orders") and self.world.order_ids)
    @rule(which=st.integers(0, MAX_ORDERS - 1))
    def cancel_order(self, which: int) -> None:
        self.step()
        n = which % len(self.world.order_ids)
        order_id = self.world.order_ids[n]
        label = f"cancel o{n}"
        self.log(label)
        bus = self.world.shops["orders"].bus
        self.run_client(
            bus.ask(CancelOrder(order_id=order_id, viewer_id=uuid.uuid4(), viewer_is_admin=True)),
            label,
            self.log,
        )
        self.settle()

    @precondition(lambda self: self.world.up("delivery") and self.world.order_ids)
    @rule(which=st.integers(0, MAX_ORDERS - 1))
    def ship(self, which: int) -> None:
        self.step()
        n = which % len(self.world.order_ids)
        order_id = self.world.order_ids[n]
        rows = self.run(
            self.world._rows("delivery", deliveries.select().where(deliveries.c.order_id == order_id))
        )
        label = f"ship o{n}"
        if not rows or rows[0].status != "PREPARING":
            self.log(f"{label}: nothing to ship")
            return
        self.log(label)
        bus = self.world.shops["delivery"].bus
        self.run_client(
            bus.ask(RecordDeliveryEvent(delivery_id=rows[0].id, status="SHIPPED")), label, self.log
        )
        self.settle()

    @precondition(lambda self: self.world.up("catalog"))
    @rule(product=st.integers(0, 2), amount=st.integers(1, 3))
    def restock(self, product: int, amount: int) -> None:
        self.step()
        product_id = self.seed.products[product]
        label = f"restock p{product} +{amount}"
        self.log(label)
        bus = self.world.shops["catalog"].bus

        async def adjust() -> Any:
            reply = await bus.ask(AdjustStock(product_id=product_id, delta=amount))
            if isinstance(reply, ProductView):
                self.world.restocked[product_id] += amount
            return reply

        self.run_client(adjust(), label, self.log)
        self.settle()

    @rule(faults=st.lists(st.sampled_from(["fail", "hang", "lost_reply", "ok"]), min_size=1, max_size=3))
    def provider_faults(self, faults: list[str]) -> None:
        self.step()
        self.log(f"provider next: {faults}")
        self.world.provider.faults.extend(faults)

    @precondition(lambda self: not self.poisoned)
    @rule()
    def poison(self) -> None:
        self.step()
        self.poisoned = True
        self.log("poison a ReserveStock")
        self.run(self.world.poison())

    # -- what the network does ---------------------------------------------------------------

    @precondition(lambda self: bool(self.network.deliverable()))
    @rule(
        which=st.integers(0, 63),
        how=st.sampled_from(
            [
                "once",
                "once",
                "once",
                "duplicate",
                "lose_reply",
                "provider fail",
                "provider hang",
                "provider lost_reply",
            ]
        ),
    )
    def deliver(self, which: int, how: str) -> None:
        """Deliver one due message: plainly, twice, losing its reply, or (to payments) with the
        provider failing, hanging or losing its answer on the first call it makes."""
        self.step()
        items = self.pending()
        item = items[which % len(items)]
        if how.startswith("provider "):
            self.world.provider.faults.insert(0, how.split()[1])
        self.deliver_and_settle(
            item, f"deliver {how}", duplicate=how == "duplicate", lose_reply=how == "lose_reply"
        )

    def deliver_and_settle(
        self, item: Any, label: str, *, duplicate: bool = False, lose_reply: bool = False
    ) -> None:
        outcome = self.run(
            self.network.deliver(item, duplicate=duplicate, lose_reply=lose_reply and item.is_request)
        )
        self.log(f"{label} {self.describe(item)} -> {outcome}")
        self.settle()

    # Delivering is what a network mostly does: two more ways to pick the same rule.
    @precondition(lambda self: bool(self.network.deliverable()))
    @rule(which=st.integers(0, 63))
    def deliver_next(self, which: int) -> None:
        self.deliver(which, "once")

    @precondition(lambda self: bool(self.network.deliverable()))
    @rule(picks=st.lists(st.integers(0, 63), min_size=1, max_size=8))
    def run_smoothly(self, picks: list[int]) -> None:
        """A calm stretch: several due messages delivered, no fault."""
        self.step()
        for which in picks:
            items = self.pending()
            if not items:
                break
            self.deliver_and_settle(items[which % len(items)], "deliver")

    @precondition(lambda self: bool(self.network.deliverable()))
    @rule(which=st.integers(0, 63))
    def drop(self, which: int) -> None:
        self.step()
        items = self.pending()
        item = items[which % len(items)]
        self.log(f"drop {self.describe(item)}")
        self.network.drop(item)
        self.settle()

    @precondition(lambda self: self.crashes < MAX_CRASHES and len(self.world.shops) > 0)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.step()
        module = data.draw(st.sampled_from(sorted(self.world.shops)), label="module")
        self.crashes += 1
        self.log(f"crash {module}")
        self.run(self.world.crash(module))
        self.settle()

    @precondition(lambda self: len(self.world.shops) < len(MODULE_NAMES))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self.step()
        down = sorted(set(MODULE_NAMES) - set(self.world.shops))
        module = data.draw(st.sampled_from(down), label="module")
        self.log(f"restart {module}")
        self.run(self.world.start(module))
        self.settle()

    @rule(seconds=st.sampled_from(ADVANCES), operator=st.booleans())
    def advance(self, seconds: float, operator: bool) -> None:
        """Time passes (timeouts, retries, deadlines, breaker waits, the outbox sweep); with
        `operator`, an operator also retries every parked (COMPENSATION_FAILED) saga."""
        self.step()
        self.log(f"advance {seconds}s" + (", operator retries parked sagas" if operator else ""))
        self.run(self.time_passes(seconds))
        if operator and self.world.up("orders"):
            for saga_id in self.run(self.world.parked()):
                self.run_client(self.world.sagas.engine.retry(saga_id), "operator retry", self.log)
        self.settle()

    async def time_passes(self, seconds: float) -> None:
        self.network.clock.advance(seconds)
        self.network.expire()
        await self.network.settle()
        await self.world.sweep()
        self.world.tick()

    # -- the invariants ----------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        found = self.run(self.world.violations())
        if found:
            self.failed = True
            self.totals.violations += len(found)
            raise AssertionError("invariants broken:\n  " + "\n  ".join(found) + "\n" + self.tail())

    def tail(self) -> str:
        return "event log (last 40):\n    " + "\n    ".join(self.events[-40:])

    # -- the end -----------------------------------------------------------------------------

    async def quiesce(self) -> None:
        """Heal every fault and let the system run until nothing is left to do."""
        self.world.provider.faults.clear()
        for module in MODULE_NAMES:
            if not self.world.up(module):
                await self.world.start(module)
        await self.network.settle()
        for _ in range(QUIESCE_ROUNDS):
            items = self.pending()
            if items:
                outcome = await self.network.deliver(items[0])
                self.log(f"drain {self.describe(items[0])} -> {outcome}")
                await self.network.settle()
                continue
            parked = await self.world.parked()
            for saga_id in parked:
                self.log("operator retries a parked saga")
                await self.world.client(self.world.sagas.engine.retry(saga_id), "retry", self.log)
            if parked:
                await self.network.settle()
                continue
            due = self.network.next_due()
            busy = (
                await self.world.unfinished()
                or await self.world.outbox_rows()
                or self.world.clients
                or self.network.pending
                or due
            )
            if not busy:
                return
            gap = due - self.network.clock.elapsed if due is not None else 10.0
            await self.time_passes(min(max(gap, 0.1), 30.0))
            await self.network.settle()
        raise AssertionError("the system did not quiesce\n" + self.tail())

    def teardown(self) -> None:
        try:
            if not self.failed:
                try:
                    self.run(self.quiesce())
                    self.run_statuses = self.run(self.world.statuses())
                    self.log("quiescent: " + " ".join(self.run_statuses))
                    found = self.run(self.world.violations()) + self.run(self.world.quiescence_violations())
                except BaseException:
                    self.failed = True
                    raise
                if found:
                    self.totals.violations += len(found)
                    raise AssertionError("at quiescence:\n  " + "\n  ".join(found) + "\n" + self.tail())
        finally:
            digest = hashlib.sha256("\n".join(self.events).encode()).hexdigest()
            totals = type(self).totals
            totals.programs += 1
            totals.steps += self.steps
            totals.faults.update(
                {
                    "dropped": self.network.stats.dropped,
                    "duplicated": self.network.stats.duplicated,
                    "lost replies": self.network.stats.lost_replies,
                    "timeouts": self.network.stats.timed_out,
                    "crashes": self.crashes,
                    **{f"provider {k}": v for k, v in self.world.provider.injected.items() if k != "ok"},
                    "provider calls": sum(self.world.provider.inner.calls.values()),
                }
            )
            totals.hashes.append(digest)
            totals.logs.append(self.events)
            with contextlib.suppress(Exception):
                self.run(self.world.stop_all())
            # Whatever this program's processes registered for /metrics goes with them.
            for key in set(metrics._scrape_hooks) - self.scrape_hooks_before:
                metrics.off_scrape(key)
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            if leftover:
                self.run(asyncio.gather(*leftover, return_exceptions=True))
            self.stack.close()
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


class DramatiqOrderSagaMachine(OrderSagaMachine):
    """The same programs, every delivery carried through Redis by the Dramatiq transport."""

    redis_url: ClassVar[str] = ""
    totals: ClassVar[Totals] = Totals()

    def make_forwarder(self) -> tuple[Forwarder, bool]:
        from .dramatiq_forwarder import DramatiqForwarder

        self.forwarder = DramatiqForwarder(self.redis_url)
        return self.forwarder, True

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.forwarder.forget()
