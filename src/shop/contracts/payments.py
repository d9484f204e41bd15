"""The published language of the payments module: the messages it owns."""

from __future__ import annotations
