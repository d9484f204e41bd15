"""HTTP controllers of the users module: thin, they turn requests into commands and queries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from email_validator import EmailNotValidError, validate_email
from litestar import Controller, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import JSONBody

from shop.contracts.users import (
    AddAddress,
    AddressPage,
    AddressView,
    GetUser,
    IssueToken,
    ListAddresses,
    RegisterUser,
    TokenIssued,
    UserView,
)
from shop.security.guards import authenticated
from shop.web.codes import NOT_BLANK, CountryCode
from shop.web.owned_lists import keyset_after, keyset_page
from shop.web.pagination import Cursor, Limit, Page
from shop.web.params import BusDep, ClientAddressDep, SignedIn, ThrottleDep
from shop.web.rejections import field_error, unwrap

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
STATUSES = {"EMAIL_TAKEN": 409, "BAD_CREDENTIALS": 401, "BUSY": 503}


class SignUp(msgspec.Struct, kw_only=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320, extra_json_schema={"format": "email"})]
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
    name: Text


class Credentials(msgspec.Struct, kw_only=True):
    email: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class NewAddress(msgspec.Struct, kw_only=True):
    recipient: Text
    line1: Text
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NOT_BLANK)]
    postal_code: Annotated[str, msgspec.Meta(min_length=1, max_length=20, pattern=NOT_BLANK)]
    country: CountryCode
    line2: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class User(msgspec.Struct):
    id: str
    email: str
    name: str
    role: str


class Address(msgspec.Struct):
    id: str
    recipient: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str
    created_at: datetime


def _user(view: UserView) -> User:
    return User(str(view.id), view.email, view.name, view.role)


def _address(view: AddressView) -> Address:
    return Address(
        str(view.id),
        view.recipient,
        view.line1,
        view.line2,
        view.city,
        view.postal_code,
        view.country,
        view.created_at,
    )


def _checked_email(raw: str) -> str:
    try:
        return validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise field_error("email", str(exc)) from None


def _filled(field: str, value: str) -> str:
    """The value without surrounding blanks; 400 naming the field when nothing is left."""
    stripped = value.strip()
    if not stripped:
        raise field_error(field, "must not be blank")
    return stripped


def _throttled(retry_after: float | None, what: str) -> None:
    if retry_after is not None:
        raise HTTPException(
            status_code=429,
            detail=f"too many {what} from this address; retry later",
            headers={"Retry-After": str(int(retry_after))},
        )


class UsersController(Controller):
    path = "/api/v1"
    tags = ["users"]

    @post(
        "/users",
        summary="Sign up",
        status_code=201,
        problems={409: "the email is taken", 429: "too many sign-ups from this address; retry later"},
    )
    async def sign_up(
        self,
        data: JSONBody[SignUp],
        bus: BusDep,
        auth_throttle: ThrottleDep,
        client_address: ClientAddressDep,
    ) -> User:
        email = _checked_email(data.email)
        name = _filled("name", data.name)
        _throttled(await auth_throttle("signup", email, client_address), "sign-ups")
        reply = await bus.ask(RegisterUser(email=email, password=data.password, name=name))
        return _user(unwrap(reply, STATUSES))

    @post(
        "/auth/token",
        summary="Log in",
        status_code=200,
        problems={401: "unknown email or wrong password", 429: "too many login attempts; retry later"},
    )
    async def token(
        self,
        data: JSONBody[Credentials],
        bus: BusDep,
        auth_throttle: ThrottleDep,
        client_address: ClientAddressDep,
    ) -> TokenIssued:
        email = data.email.strip().lower()
        _throttled(await auth_throttle("login", email, client_address), "login attempts")
        reply = await bus.ask(IssueToken(email=email, password=data.password))
        token: TokenIssued = unwrap(reply, STATUSES)
        return token

    @get(
        "/users/me",
        guards=[authenticated],
        summary="The caller's profile",
        problems={404: "this account no longer exists"},
    )
    async def me(self, request: SignedIn, bus: BusDep) -> User:
        view = await bus.ask(GetUser(user_id=request.user.user_id))
        if view is None:
            raise NotFoundException(detail="this account no longer exists")
        return _user(view)

    @post("/users/me/addresses", guards=[authenticated], summary="Add an address", status_code=201)
    async def add_address(self, data: JSONBody[NewAddress], request: SignedIn, bus: BusDep) -> Address:
        country = data.country.upper()
        view = await bus.ask(
            AddAddress(
                user_id=request.user.user_id,
                recipient=_filled("recipient", data.recipient),
                line1=_filled("line1", data.line1),
                line2=(data.line2.strip() or None) if data.line2 else None,
                city=_filled("city", data.city),
                postal_code=_filled("postal_code", data.postal_code),
                country=country,
            )
        )
        return _address(view)

    @get("/users/me/addresses", guards=[authenticated], summary="The caller's addresses")
    async def addresses(
        self, request: SignedIn, bus: BusDep, limit: Limit = 20, cursor: Cursor = None
    ) -> Page[Address]:
        after = keyset_after(cursor)
        page: AddressPage = await bus.ask(
            ListAddresses(user_id=request.user.user_id, limit=limit, after=after)
        )
        return keyset_page(page, _address)


__all__: list[Any] = ["Response", "UsersController"]
