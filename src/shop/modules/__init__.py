"""The bounded contexts. Each is a package whose `module` attribute is its descriptor.

Which modules exist is decided once, by `shop.settings.MODULE_NAMES`; everything else that needs
the list or a module's parts (the composition root, migrations, the gateway's routes, derived
in shop.app) asks here,
so adding a module is adding its package and its name (see docs/extending.md).
"""

from __future__ import annotations

import importlib

from shop.bus.module import Module
from shop.settings import MODULE_NAMES

__all__ = ["MODULE_NAMES", "descriptor", "descriptors"]


def descriptor(name: str) -> Module:
    """A module's descriptor, by name (`shop.modules.<name>.module`)."""
    if name not in MODULE_NAMES:
        raise ValueError(f"unknown module {name!r}; the modules are {', '.join(MODULE_NAMES)}")
    found = importlib.import_module(f"{__name__}.{name}").module
    if not isinstance(found, Module) or found.name != name:
        raise TypeError(f"{__name__}.{name}.module is not the Module named {name!r}")
    return found


def descriptors() -> list[Module]:
    """Every module's descriptor, in `MODULE_NAMES` order."""
    return [descriptor(name) for name in MODULE_NAMES]
