"""catalog: items.price

Revision ID: c2
Revises: c1
"""

import sqlalchemy as sa
from alembic import op

revision = "c2"
down_revision = "c1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:  # batch: SQLite cannot drop columns in place
        batch.add_column(sa.Column("price", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("price")
