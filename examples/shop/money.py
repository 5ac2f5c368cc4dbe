"""Money as ``Decimal`` with two places, stored as integer cents.

Never a float: JSON numbers and strings are read straight into ``Decimal``
(msgspec parses the literal text), and databases store whole cents, which
every dialect keeps exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from amoeba import Invalid

CENT = Decimal("0.01")
MAX = Decimal("1000000000")


def to_cents(amount: Decimal, field: str) -> int:
    """Cents of a client-given amount; ``Invalid`` naming ``field`` unless it
    is finite, non-negative, below a billion and has at most two decimals."""
    try:
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
