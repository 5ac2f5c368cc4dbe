"""Money as ``Decimal`` with two places, stored as integer cents.

Never a float: an amount a client sends is a decimal string (``Money``: "12.50",
at most two decimals, below a billion, stated as a pattern in the OpenAPI
document, so what the document allows is exactly what is accepted), read into
``Decimal``; databases store whole cents, which every dialect keeps exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated

import msgspec

from amoeba import Invalid
from shop.fields import END

CENT = Decimal("0.01")
MAX = Decimal("1000000000")
MONEY_PATTERN = r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,2})?" + END
Money = Annotated[str, msgspec.Meta(pattern=MONEY_PATTERN, examples=["12.50"],
                                    description="an amount: a decimal string, at most two decimals")]


def to_cents(amount: Decimal | str, field: str) -> int:
    """Cents of a client-given amount; ``Invalid`` naming ``field`` unless it
    is finite, non-negative, below a billion and has at most two decimals."""
    try:
        amount = Decimal(amount)
        ok = amount.is_finite() and 0 <= amount < MAX and amount == amount.quantize(CENT)
    except InvalidOperation:
        ok = False
    if not ok:
        raise Invalid(f"{field} must be an amount like \"12.50\": at most two decimals, "
                      f"0 or more and below {MAX}", details=[{"path": f"$.{field}",
                                                               "reason": f"got {amount}"}])
    return int(amount * 100)


def from_cents(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT, rounding=ROUND_HALF_EVEN)
