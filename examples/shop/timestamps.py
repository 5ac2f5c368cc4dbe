"""The timestamp column type of the shop's tables.

MySQL's DATETIME drops fractions of a second unless asked; an order read
back must equal the order first returned, so keep microseconds everywhere.
"""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
