"""The published language of the catalog module: the messages it owns."""

from __future__ import annotations
