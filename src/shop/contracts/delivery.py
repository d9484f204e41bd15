"""The published language of the delivery module: the messages it owns."""

from __future__ import annotations
