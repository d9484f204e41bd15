"""Tables of the catalog module, all in the `catalog` schema."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="catalog")
