"""The published language of the orders module: the messages it owns."""

from __future__ import annotations
