"""Tables of the payments module, all in the `payments` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="payments")
