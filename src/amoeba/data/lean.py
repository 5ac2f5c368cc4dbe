"""Statements run on the driver's connection without SQLAlchemy's per-call
execution machinery.

SQLAlchemy builds and compiles the statement (and caches the compiled form,
as it does for its own execution); what a call then costs here is the cache
key, the bound parameters in the driver's order, the driver's call, and the
rows.  Its own path adds, per statement, an execution context, events, a
cursor wrapper, result metadata, and on the async engine a greenlet: about
80 µs against 4 µs for the whole of a primary-key read on SQLite.

A statement takes this path when its compiled form needs nothing of that
machinery: no Python-side column defaults (``insert_prefetch``), no
``onupdate`` values, no ``RETURNING`` with several parameter sets, no
execution options.  Everything else (DDL, ORM, those statements) runs
through SQLAlchemy as before.

The results are SQLAlchemy's own ``Row`` objects in an ``IteratorResult``
(attribute access, ``first()``, ``scalar_one()``, ``all()``, ``mappings()``
...), with ``rowcount`` and, for a one-row INSERT, ``inserted_primary_key``,
as ``CursorResult`` has them.  Result and bind processors of the column
types (``TypeDecorator`` s included) are applied as SQLAlchemy applies them.

This uses three of SQLAlchemy's internal entry points (``_compile_w_cache``,
``construct_params`` with its collected parameters, and
``_process_parameters_for_postcompile``); :func:`supported` checks them once
against the installed version, and when they differ every statement simply
takes SQLAlchemy's path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql import compiler

__all__ = ["Bound", "LeanResult", "Plan", "bind", "supported"]

_KINDS = (sa.Select, sa.Insert, sa.Update, sa.Delete, sa.TextClause)
_LINTING = compiler.WARN_LINTING


class Plan:
    """What a compiled statement needs to run without SQLAlchemy: kept on the
    compiled object, which SQLAlchemy's statement cache keeps alive."""

    __slots__ = ("expanding", "keys", "pk", "positions", "processors", "read", "results", "sql")

    def __init__(self, compiled: Any, dialect: Dialect):
        self.sql: str = compiled.string
        self.positions: list[str] = list(compiled.positiontup or ())
        self.processors: Mapping[str, Callable[[Any], Any]] = compiled._bind_processors
        self.expanding = bool(compiled.literal_execute_params or compiled.post_compile_params)
        #: A SELECT: it writes nothing (a text() statement is taken for a write).
        self.read = isinstance(compiled.statement, sa.Select)
        columns = compiled._result_columns
        #: Result keys; None: take them from the cursor (a text() statement).
        self.keys: list[str] | None = [c.keyname for c in columns] if columns else None
        procs = [c.type._cached_result_processor(dialect, None) for c in columns]
        self.results: list[Callable[[Any], Any] | None] | None = (
            procs if any(p is not None for p in procs) else None)
        #: One-row INSERT: (column key, autoincrement?) of the primary key.
        self.pk: list[tuple[str, bool]] | None = None
        if compiled.isinsert:
            table = compiled.compile_state.dml_table
            auto = getattr(table, "autoincrement_column", None)
            self.pk = [(c.key, c is auto) for c in table.primary_key]


class Bound:
    """A statement ready for the driver: its SQL and positional parameters."""

    __slots__ = ("args", "many", "params", "plan", "sql")

    def __init__(self, plan: Plan, sql: str, args: list[list[Any]], many: bool,
                 params: list[dict[str, Any]]):
        self.plan = plan
        self.sql = sql
        self.args = args
        self.many = many
        self.params = params

    def rows(self, raw: Sequence[Sequence[Any]], keys: list[str] | None,
             rowcount: int, lastrowid: int | None) -> LeanResult:
        plan = self.plan
        procs = plan.results
        if procs is not None:
            raw = [tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=False))
                   for row in raw]
        pk: tuple[Any, ...] | None = None
        if plan.pk is not None and not self.many:
            values = self.params[0]
            pk = tuple(lastrowid if auto and values.get(key) is None else values.get(key)
                       for key, auto in plan.pk)
        return LeanResult(SimpleResultMetaData(plan.keys or keys or []), iter(raw),
                          rowcount=rowcount, returns_rows=bool(plan.keys or keys),
                          inserted_primary_key=pk, lastrowid=lastrowid)


class LeanResult(IteratorResult[Any]):
    """An ``IteratorResult`` with what callers read of a ``CursorResult``."""

    def __init__(self, meta: SimpleResultMetaData, rows: Any, *, rowcount: int,
                 returns_rows: bool, inserted_primary_key: tuple[Any, ...] | None,
                 lastrowid: int | None):
        super().__init__(meta, rows)
        self.rowcount = rowcount
        self.returns_rows = returns_rows
        self.lastrowid = lastrowid
        self._pk = inserted_primary_key

    @property
    def inserted_primary_key(self) -> tuple[Any, ...]:
        if self._pk is None:
            raise sa.exc.InvalidRequestError("inserted_primary_key: not a one-row INSERT")
        return self._pk


def bind(stmt: Any, params: Any, dialect: Dialect, cache: Any) -> Bound | None:
    """``stmt`` with ``params`` ready for the driver, or None when it needs
    SQLAlchemy's own execution (see the module's doc)."""
    if not isinstance(stmt, _KINDS) or stmt._execution_options:
        return None
    sets: list[Mapping[str, Any]]
    compiled: Any  # an SQLCompiler; its private attributes are what this module uses
    if params is None:
        many, sets = False, [{}]
    elif isinstance(params, Mapping):
        many, sets = False, [params]
    elif isinstance(params, list) and params and all(isinstance(p, Mapping) for p in params):
        many, sets = len(params) > 1, params
    else:
        return None
    compiled, extracted, collected, _hit = stmt._compile_w_cache(
        dialect=dialect, compiled_cache=cache, column_keys=sorted(sets[0]),
        for_executemany=many, schema_translate_map=None, linting=_LINTING)
    if (compiled.insert_prefetch or compiled.update_prefetch or not compiled.positional
            or compiled.schema_translate_map or (many and compiled.effective_returning)
            or (many and compiled._insertmanyvalues is not None)):
        return None
    plan: Plan | None = compiled.__dict__.get("_amoeba_plan")
    if plan is None:
        plan = compiled.__dict__["_amoeba_plan"] = Plan(compiled, dialect)
    values = [compiled.construct_params(p, escape_names=False, _group_number=i,
                                        extracted_parameters=extracted,
                                        _collected_params=collected)
              for i, p in enumerate(sets)]
    sql, positions, procs = plan.sql, plan.positions, plan.processors
    if plan.expanding:
        if many:
            return None
        state = compiled._process_parameters_for_postcompile(values[0])
        sql, positions = state.statement, list(state.positiontup or ())
        procs = {**procs, **state.processors}
    args = [[procs[k](v[k]) if k in procs else v[k] for k in positions] for v in values]
    return Bound(plan, sql, args, many, values)


def supported(dialect: Dialect) -> bool:
    """Do SQLAlchemy's internals still look as :func:`bind` expects?"""
    t = sa.table("t", sa.column("a"), sa.column("b"))
    try:
        bound = bind(sa.select(t.c.a).where(t.c.b == sa.bindparam("x"), t.c.a.in_([1, 2])),
                     {"x": 3}, dialect, None)
    except (AttributeError, TypeError, KeyError):
        return False
    return bound is not None and bound.args == [[3, 1, 2]] and "?" in bound.sql
