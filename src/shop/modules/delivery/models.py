"""Tables of the delivery module, all in the `delivery` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="delivery")
