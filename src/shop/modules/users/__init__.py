"""The users bounded context: sign-up, login, profile, addresses."""

from __future__ import annotations

from shop.bus.module import Module
from shop.modules.users import api, handlers, models
from shop.modules.users.passwords import Passwords
from shop.modules.users.service import UserDirectory

module = Module("users", metadata=models.metadata, controllers=[api.UsersController])
module.include(handlers.handlers)
module.provide(UserDirectory, UserDirectory)
module.provide(Passwords, Passwords, singleton=True)

__all__ = ["module"]
