"""Tables of the orders module, all in the `orders` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="orders")
