"""The shop's input types, bounded as its databases store them: a request
outside a column's range is a 422 naming the field, never a database error
(a 500), and the OpenAPI document shows the bounds."""

from __future__ import annotations

from typing import Annotated

import msgspec

INT32_MAX = 2**31 - 1  # PostgreSQL INTEGER (SQLite's integers are 64-bit: wider)
# PostgreSQL text cannot hold NUL: such a string is refused at the edge.
NO_NUL = r"^[^\x00]*$"
# The end of a pattern: Python's "$" also matches before a final newline, the
# ECMA-262 "$" an OpenAPI validator uses does not; this means the same in both.
END = r"(?!\n)$"

RowId = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX, description="a row id")]
# Pages stop long before OFFSET ((page - 1) * per_page) could overflow a 64-bit integer.
Page = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
PerPage = Annotated[int, msgspec.Meta(ge=1, le=100)]
