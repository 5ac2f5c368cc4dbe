"""orders: items (the same table name as catalog's, in another schema)

Revision ID: o1
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "o1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("order_id", sa.Integer, primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("items")
