"""The tables events keep in a service's own ``Database``.

    amoeba_outbox        events published in a transaction, until the relay
                          has handed them to the broker
    amoeba_inbox         ids of events this service has handled: a
                          redelivery finds its id and does nothing
    amoeba_dead_letters  events whose handler kept failing; listed and
                          replayed with ``amoeba events dead-letters|replay``

They belong to amoeba, not to the app's migrations, and are created (if
missing) when the service starts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["dead_letters", "inbox", "metadata", "outbox"]

metadata = sa.MetaData()
_TIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Payloads are the event's JSON: readable in a dead-letter listing, and text
# avoids binary-escaping quirks of some MySQL drivers.
_JSON = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

outbox = sa.Table(
    "amoeba_outbox", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, index=True),  # twice is allowed: inboxes dedupe
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("event_key", sa.String(200), nullable=True),
    sa.Column("payload", _JSON, nullable=False),
    # A replayed dead letter goes out again under a new broker dedupe id.
    sa.Column("dedupe", sa.String(100), nullable=True),
    sa.Column("created_at", _TIME, nullable=False),
    # SQLite would reuse the numbers of deleted rows without AUTOINCREMENT; the
    # relay relies on seq growing.
    sqlite_autoincrement=True,
)
inbox = sa.Table(
    "amoeba_inbox", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("handled_at", _TIME, nullable=False),
)
dead_letters = sa.Table(
    "amoeba_dead_letters", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("handler", sa.String(200), nullable=False),
    sa.Column("payload", _JSON, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("failed_at", _TIME, nullable=False),
)
