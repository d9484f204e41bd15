"""Handlers of the users module's commands and queries."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from shop.bus.bus import Bus
from shop.bus.messages import Rejected
from shop.bus.module import Handlers
from shop.contracts.users import (
    AddAddress,
    AddressPage,
    AddressView,
    CreateAdmin,
    GetAddress,
    GetUser,
    IssueToken,
    ListAddresses,
    RegisterUser,
    TokenIssued,
    UserRegistered,
    UserView,
)
from shop.db import Database, unit_of_work
from shop.modules.users.passwords import HashingBusy, Passwords
from shop.modules.users.service import EmailTaken, UserDirectory, normalise_email
from shop.observability.loggers import get_logger
from shop.security.tokens import TokenIssuer
from shop.settings import Settings

handlers = Handlers()

log = get_logger("shop.users")
BUSY = Rejected(code="BUSY", detail="too many passwords are being checked right now; retry shortly")


async def _create(
    email: str, password: str, name: str, role: str, database: Database, passwords: Passwords, bus: Bus
) -> UserView | Rejected:
    """Hash first (deliberately slow, in a thread), then a short transaction: the users write
    lock is never held while argon2 runs."""
    try:
        password_hash = await passwords.hash(password)
    except HashingBusy:
        return BUSY
    async with unit_of_work(database) as uow:
        try:
            user = await UserDirectory(uow.session).create(
                email=email, name=name, password_hash=password_hash, role=role
            )
        except EmailTaken:
            return Rejected(
                code="EMAIL_TAKEN", detail="an account with this email already exists", field="email"
            )
        await bus.publish(UserRegistered(user_id=user.id, email=user.email, role=user.role))
    return user


@handlers.handles(RegisterUser, transactional=False)
async def register_user(
    cmd: RegisterUser, database: Database, passwords: Passwords, bus: Bus
) -> UserView | Rejected:
    """Idempotent by email (a duplicate is EMAIL_TAKEN), so it needs no inbox."""
    return await _create(cmd.email, cmd.password, cmd.name, "customer", database, passwords, bus)


@handlers.handles(CreateAdmin, transactional=False)
async def create_admin(
    cmd: CreateAdmin, database: Database, passwords: Passwords, bus: Bus
) -> UserView | Rejected:
    return await _create(cmd.email, cmd.password, cmd.name, "admin", database, passwords, bus)


@handlers.handles(IssueToken)
async def issue_token(
    query: IssueToken, database: Database, passwords: Passwords, issuer: TokenIssuer
) -> TokenIssued | Rejected:
    """Look the user up in a short read, then verify the hash holding no database connection."""
    async with unit_of_work(database, write=False) as uow:
        found = await UserDirectory(uow.session).find_by_email(query.email)
    user, password_hash = found if found is not None else (None, None)
    try:
        verified = await passwords.verify(password_hash, query.password)
    except HashingBusy:
        return BUSY
    if not verified or user is None:
        return Rejected(code="BAD_CREDENTIALS", detail="wrong email or password")
    return TokenIssued(
        access_token=issuer.issue(user.id, user.role, user.email),
        token_type="bearer",
        expires_in=issuer.ttl_seconds,
    )


@handlers.handles(GetUser)
async def get_user(query: GetUser, directory: UserDirectory) -> UserView | None:
    return await directory.get(query.user_id)


@handlers.handles(AddAddress)
async def add_address(cmd: AddAddress, directory: UserDirectory) -> AddressView:
    return await directory.add_address(
        cmd.user_id,
        recipient=cmd.recipient,
        line1=cmd.line1,
        line2=cmd.line2,
        city=cmd.city,
        postal_code=cmd.postal_code,
        country=cmd.country,
    )


@handlers.handles(ListAddresses)
async def list_addresses(query: ListAddresses, directory: UserDirectory) -> AddressPage:
    after = (datetime.fromisoformat(query.after[0]), UUID(query.after[1])) if query.after else None
    return await directory.addresses(query.user_id, limit=query.limit, after=after)


@handlers.handles(GetAddress)
async def get_address(query: GetAddress, directory: UserDirectory) -> AddressView | None:
    """An address only for its owner: anyone else learns nothing, not even that it exists."""
    return await directory.address_of(query.address_id, query.user_id)


@handlers.on_shutdown
async def stop_hashing(passwords: Passwords) -> None:
    passwords.close()


@handlers.on_startup
async def apply_admin_from_settings(
    settings: Settings, database: Database, passwords: Passwords, bus: Bus
) -> None:
    """SHOP_ADMIN_EMAIL + SHOP_ADMIN_PASSWORD: that admin exists and signs in with that password.

    The admin is created if missing; an existing admin whose password is another gets this one
    (rotating SHOP_ADMIN_PASSWORD takes effect at the next start). A customer account that
    already uses the email is left alone: an operator must choose another email."""
    if not settings.admin_email or not settings.admin_password:
        return
    email, password = normalise_email(settings.admin_email), settings.admin_password
    found = await _find(database, email)
    if found is None:
        created = await _create(email, password, "Administrator", "admin", database, passwords, bus)
        if not isinstance(created, Rejected):
            log.info("users.admin_created", email=created.email)
            return
        found = await _find(database, email)  # another instance created it meanwhile
        if found is None:
            log.error("users.admin_not_created", email=email, reason=created.detail)
            return
    user, password_hash = found
    if user.role != "admin":
        log.error(
            "users.admin_email_taken",
            email=email,
            role=user.role,
            detail="an account that is not an admin uses SHOP_ADMIN_EMAIL; it was left unchanged",
        )
        return
    if await passwords.verify(password_hash, password):
        log.info("users.admin_exists", email=email)
        return
    new_hash = await passwords.hash(password)
    async with unit_of_work(database) as uow:
        await UserDirectory(uow.session).set_password_hash(user.id, new_hash)
    log.info("users.admin_password_rotated", email=email)


async def _find(database: Database, email: str) -> tuple[UserView, str] | None:
    async with unit_of_work(database, write=False) as uow:
        return await UserDirectory(uow.session).find_by_email(email)
