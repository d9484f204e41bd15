"""The kernel's own tables, created in every module's schema by that module's migrations.

They are declared without a schema; each module's engine translates them into its own schema
(PostgreSQL) or its own file (SQLite), so one definition serves every module.
"""

from __future__ import annotations

import sqlalchemy as sa

kernel_metadata = sa.MetaData()

outbox = sa.Table(
    "outbox",
    kernel_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("message_type", sa.String(200), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("traceparent", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

inbox = sa.Table(
    "inbox",
    kernel_metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.Uuid, primary_key=True),
    sa.Column("reply", sa.LargeBinary, nullable=True),
    sa.Column("handled_at", sa.Float, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    kernel_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("message_id", sa.Uuid, nullable=False),
    sa.Column("message_type", sa.String(200), nullable=False),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
)

saga_instances = sa.Table(
    "saga_instances",
    kernel_metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("step", sa.String(100), nullable=True),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("failure_reason", sa.String(100), nullable=True),
    sa.Column("step_deadline", sa.DateTime(timezone=True), nullable=True),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True, index=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

saga_steps = sa.Table(
    "saga_steps",
    kernel_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.Uuid, sa.ForeignKey("saga_instances.id"), nullable=False, index=True),
    sa.Column("step", sa.String(100), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
