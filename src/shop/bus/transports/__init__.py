"""Transports: how envelopes move between modules. One protocol, two adapters."""

from shop.bus.transports.base import Host, Outcome, Transport

__all__ = ["Host", "Outcome", "Transport"]
