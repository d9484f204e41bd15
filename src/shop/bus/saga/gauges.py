"""The saga gauges of a process, read from its modules' databases when /metrics is scraped."""

from __future__ import annotations

from collections.abc import Iterable

from shop.bus.saga.engine import SagaEngine
from shop.bus.saga.statuses import NOT_FINAL
from shop.observability import metrics

__all__ = ["report"]


async def report(engines: Iterable[SagaEngine]) -> None:
    """``shop_sagas_active`` (per type and not-final status, zeros included) and
    ``shop_sagas_overdue`` (per type) over every engine of this process."""
    by_state: dict[tuple[str, ...], float] = {}
    overdue_by_type: dict[str, int] = {}
    for engine in engines:
        active, overdue = await engine.counts(final=False), await engine.overdue_counts()
        types = sorted({*engine.saga_types, *(t for t, _ in active), *overdue})
        by_state.update({(t, s): 0 for t in types for s in sorted(NOT_FINAL)})
        for (saga_type, status), count in active.items():
            by_state[(saga_type, status)] = count
        for saga_type in types:
            overdue_by_type[saga_type] = overdue_by_type.get(saga_type, 0) + overdue.get(saga_type, 0)
    metrics.SAGAS_ACTIVE_READING.set_all(by_state)
    metrics.SAGAS_OVERDUE_READING.set_all({(t,): count for t, count in overdue_by_type.items()})
