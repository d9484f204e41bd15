"""The caller's addresses: POST/GET /api/v1/users/me/addresses, and the GetAddress query."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shop.contracts.users import AddressView, GetAddress
from shop.web.pagination import encode_cursor

ADDRESS = {
    "recipient": "Ada Lovelace",
    "line1": "12 St James's Square",
    "line2": "Flat 3",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "gb",
}
ADDRESSES = "/api/v1/users/me/addresses"


async def test_adding_an_address_is_201_with_its_id_and_fields_and_the_country_in_upper_case(
    open_shop: Any,
) -> None:
    async with open_shop() as api:
        _, headers = await api.customer()

        response = await api.client.post(ADDRESSES, json=ADDRESS, headers=headers)

        assert response.status_code == 201
        body = response.json()
        assert uuid.UUID(body["id"])
        assert body["country"] == "GB"
        for field in ("recipient", "line1", "line2", "city", "postal_code"):
            assert body[field] == ADDRESS[field]


async def test_line2_is_optional_and_null_when_left_out(open_shop: Any) -> None:
    async with open_shop() as api:
        _, headers = await api.customer()
        address = {k: v for k, v in ADDRESS.items() if k != "line2"} | {"country": "DE"}

        response = await api.client.post(ADDRESSES, json=address, headers=headers)

        assert response.status_code == 201
        assert response.json()["line2"] is None
        assert response.json()["country"] == "DE"


@pytest.mark.parametrize("country", ["XX", "DEU", "D", "", "12", "zz", 49, None])
async def test_a_country_that_is_not_iso_3166_alpha_2_is_400_naming_country(
    open_shop: Any, country: Any
) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.post(ADDRESSES, json={**ADDRESS, "country": country}, headers=headers)

        assert api.fields(response) == {"country"}
        listed = await api.client.get(ADDRESSES, headers=headers)
        assert listed.json()["items"] == []


@pytest.mark.parametrize("missing", ["recipient", "line1", "city", "postal_code", "country"])
async def test_an_address_without_a_required_field_is_400_naming_it(open_shop: Any, missing: str) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()
        address = {k: v for k, v in ADDRESS.items() if k != missing}

        response = await api.client.post(ADDRESSES, json=address, headers=headers)

        assert missing in api.fields(response)


async def test_blank_address_fields_are_400_not_stored_empty(open_shop: Any) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.post(ADDRESSES, json={**ADDRESS, "city": "   "}, headers=headers)

        assert api.fields(response) == {"city"}


async def test_an_address_with_malformed_json_is_400(open_shop: Any) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.post(
            ADDRESSES, content=b'{"recipient": "A",', headers={**headers, "content-type": "application/json"}
        )

        assert api.fields(response) == {"body"}


async def test_addresses_need_a_token(open_shop: Any) -> None:
    async with open_shop() as api:
        api.problem(await api.client.post(ADDRESSES, json=ADDRESS), 401)
        api.problem(await api.client.get(ADDRESSES), 401)


async def test_the_address_list_holds_only_the_callers_own_addresses(open_shop: Any) -> None:
    async with open_shop() as api:
        _, ada = await api.customer()
        _, eve = await api.customer()
        created = (await api.client.post(ADDRESSES, json=ADDRESS, headers=ada)).json()

        mine = await api.client.get(ADDRESSES, headers=ada)
        theirs = await api.client.get(ADDRESSES, headers=eve)

        assert mine.status_code == 200
        assert mine.json() == {"items": [created], "next_cursor": None}
        assert theirs.status_code == 200
        assert theirs.json() == {"items": [], "next_cursor": None}


async def test_addresses_are_paged_with_limit_and_an_opaque_cursor(open_shop: Any) -> None:
    async with open_shop() as api:
        _, headers = await api.customer()
        created = []
        for city in ("Berlin", "Paris", "Rome"):
            response = await api.client.post(ADDRESSES, json={**ADDRESS, "city": city}, headers=headers)
            created.append(response.json())

        first = await api.client.get(ADDRESSES, params={"limit": 2}, headers=headers)
        assert first.status_code == 200
        page = first.json()
        assert [a["id"] for a in page["items"]] == [created[0]["id"], created[1]["id"]]
        assert isinstance(page["next_cursor"], str)
        assert page["next_cursor"]

        second = await api.client.get(
            ADDRESSES, params={"limit": 2, "cursor": page["next_cursor"]}, headers=headers
        )
        assert second.status_code == 200
        assert second.json() == {"items": [created[2]], "next_cursor": None}

        everything = await api.client.get(ADDRESSES, headers=headers)
        assert everything.json() == {"items": created, "next_cursor": None}


async def test_a_cursor_is_bound_to_its_owner_list(open_shop: Any) -> None:
    """Another customer replaying someone's cursor still sees only their own (no) addresses."""
    async with open_shop() as api:
        _, ada = await api.customer()
        _, eve = await api.customer()
        for city in ("Berlin", "Paris"):
            await api.client.post(ADDRESSES, json={**ADDRESS, "city": city}, headers=ada)
        cursor = (await api.client.get(ADDRESSES, params={"limit": 1}, headers=ada)).json()["next_cursor"]

        response = await api.client.get(ADDRESSES, params={"cursor": cursor}, headers=eve)

        assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5"])
async def test_a_limit_outside_1_to_100_is_400_naming_limit(open_shop: Any, limit: str) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.get(ADDRESSES, params={"limit": limit}, headers=headers)

        assert api.fields(response) == {"limit"}


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_the_limit_bounds_themselves_are_allowed(open_shop: Any, limit: str) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.get(ADDRESSES, params={"limit": limit}, headers=headers)

        assert response.status_code == 200


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("abc", id="not-base64-json"),
        pytest.param("!!!!", id="not-base64"),
        pytest.param(encode_cursor("only-one"), id="wrong-arity"),
        pytest.param(encode_cursor("not-a-date", str(uuid.uuid4())), id="bad-date"),
        pytest.param(encode_cursor("2024-01-01T00:00:00+00:00", "not-a-uuid"), id="bad-uuid"),
        pytest.param(encode_cursor(1, 2), id="numbers"),
        pytest.param(encode_cursor(None, None), id="nulls"),
        pytest.param(encode_cursor(["x"], {"y": 1}), id="containers"),
        pytest.param("x" * 600, id="too-long"),
    ],
)
async def test_a_forged_cursor_is_400_naming_cursor_never_500(open_shop: Any, cursor: str) -> None:
    async with open_shop() as api:
        headers = api.signed_token_headers()

        response = await api.client.get(ADDRESSES, params={"cursor": cursor}, headers=headers)

        assert api.fields(response) == {"cursor"}


async def test_forged_cursors_do_not_trip_the_users_breaker_for_everyone(open_shop: Any) -> None:
    """A client sending bad cursors over and over must not take logins down for others."""
    async with open_shop() as api:
        _, headers = await api.customer()
        forged = encode_cursor("not-a-date", "not-a-uuid")
        for _ in range(30):
            response = await api.client.get(ADDRESSES, params={"cursor": forged}, headers=headers)
            assert response.status_code == 400

        _, other = await api.customer()
        assert (await api.client.get(ADDRESSES, headers=other)).status_code == 200


async def test_get_address_answers_the_owner_and_nobody_else(open_shop: Any) -> None:
    async with open_shop() as api:
        ada, ada_headers = await api.customer()
        eve, _ = await api.customer()
        created = (await api.client.post(ADDRESSES, json=ADDRESS, headers=ada_headers)).json()
        bus = api.shop.bus
        address_id = uuid.UUID(created["id"])

        owned = await bus.ask(GetAddress(address_id=address_id, user_id=uuid.UUID(ada["id"])))
        foreign = await bus.ask(GetAddress(address_id=address_id, user_id=uuid.UUID(eve["id"])))
        unknown = await bus.ask(GetAddress(address_id=uuid.uuid4(), user_id=uuid.UUID(ada["id"])))

        assert isinstance(owned, AddressView)
        assert owned.id == address_id
        assert owned.user_id == uuid.UUID(ada["id"])
        assert (owned.recipient, owned.line1, owned.line2, owned.city, owned.postal_code, owned.country) == (
            "Ada Lovelace",
            "12 St James's Square",
            "Flat 3",
            "London",
            "SW1Y 4JH",
            "GB",
        )
        assert foreign is None
        assert unknown is None
