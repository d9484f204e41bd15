"""Request fields holding standard codes, validated exactly as the OpenAPI document states them.

A code is accepted in any letter case and stored upper case; anything else is a 400 naming the
field, decided by msgspec before any handler runs. The pattern in the document is the one
msgspec checks (spelt with character classes, since JSON Schema patterns have no flags).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import pycountry

CURRENCY_CODES: tuple[str, ...] = tuple(sorted(currency.alpha_3 for currency in pycountry.currencies))
COUNTRY_CODES: tuple[str, ...] = tuple(sorted(country.alpha_2 for country in pycountry.countries))


def any_case_pattern(codes: tuple[str, ...]) -> str:
    """A regular expression matching exactly these codes, in any letter case."""
    spelt = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in code) for code in codes)
    return f"^(?:{'|'.join(spelt)})$"


CurrencyCode = Annotated[
    str,
    msgspec.Meta(
        pattern=any_case_pattern(CURRENCY_CODES),
        description="an ISO 4217 currency code (any case; stored upper case), e.g. EUR",
    ),
]
CountryCode = Annotated[
    str,
    msgspec.Meta(
        pattern=any_case_pattern(COUNTRY_CODES),
        description="an ISO 3166-1 alpha-2 country code (any case; stored upper case), e.g. DE",
    ),
]

# Text a person types: surrounding blanks are trimmed, so it must hold a non-blank character.
NOT_BLANK = r"\S"
