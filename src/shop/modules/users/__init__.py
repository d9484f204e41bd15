"""The users bounded context: sign-up, login, profile, addresses."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.users import models

module = Module("users", metadata=models.metadata)

from shop.modules.users import api, handlers  # noqa: E402  (they register on `module`)
from shop.modules.users.passwords import Passwords  # noqa: E402
from shop.modules.users.service import UserDirectory  # noqa: E402

module.controllers = [api.UsersController]
module.provide(UserDirectory, UserDirectory)
module.provide(Passwords, Passwords, singleton=True)

__all__ = ["handlers", "module"]
