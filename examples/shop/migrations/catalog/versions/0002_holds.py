"""stock holds: what an order in flight has taken

Revision ID: catalog_0002
Revises: catalog_0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "hold_lines",
        sa.Column("hold_id", sa.String(64), primary_key=True),
        sa.Column("product_id", sa.Integer, primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hold_lines")
    op.drop_table("holds")
