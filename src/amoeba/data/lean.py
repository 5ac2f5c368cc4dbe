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
_NO_COLUMNS = SimpleResultMetaData([])
_LINTING = compiler.WARN_LINTING


class Plan:
    """What a compiled statement needs to run without SQLAlchemy: kept on the
    compiled object, which SQLAlchemy's statement cache keeps alive."""

    __slots__ = ("dialect", "expand_keys", "expanding", "implicit", "keys", "meta", "pk",
                 "positions", "processors", "read", "results", "sql", "types")

    def __init__(self, compiled: Any, dialect: Dialect):
        self.sql: str = compiled.string
        self.positions: list[str] = list(compiled.positiontup or ())
        self.processors: Mapping[str, Callable[[Any], Any]] = compiled._bind_processors
        self.expanding = bool(compiled.literal_execute_params or compiled.post_compile_params)
        #: The keys of its expanding parameters (``IN`` lists), whose SQL and
        #: parameter order depend on the lists' lengths: found per length by
        #: :func:`_fast_expanding`.  None: not that way (literal-rendered
        #: parameters, tuples), SQLAlchemy expands them on every call.
        self.expand_keys: tuple[str, ...] | None = None
        if (self.expanding and not compiled.literal_execute_params
                and not any(b.literal_execute or b.type._is_tuple_type
                            for b in compiled.post_compile_params)):
            self.expand_keys = tuple(sorted(b.key for b in compiled.post_compile_params))
        #: A SELECT: it writes nothing (a text() statement is taken for a write).
        self.read = isinstance(compiled.statement, sa.Select)
        columns = compiled._result_columns
        #: Result keys; None: take them from the cursor (a text() statement).
        self.keys: list[str] | None = [c.keyname for c in columns] if columns else None
        # The results' metadata, shared by every result of the statement (as
        # SQLAlchemy shares a compiled statement's CursorResultMetaData).
        self.meta = SimpleResultMetaData(self.keys) if self.keys else _NO_COLUMNS
        self.dialect = dialect
        self.types = [c.type for c in columns]
        # Result processors by the driver's column types (some depend on them:
        # PostgreSQL's NUMERIC), None where no column has one.
        self.results: dict[tuple[Any, ...] | None, list[Callable[[Any], Any] | None] | None] = {}
        #: One-row INSERT: (column key, autoincrement?) of the primary key.
        self.pk: list[tuple[str, bool]] | None = None
        #: An INSERT whose RETURNING SQLAlchemy added for the primary key
        #: (PostgreSQL): its row is the key, not a result.
        self.implicit: list[str] | None = (
            [c.key for c in compiled.implicit_returning] if compiled.implicit_returning else None)
        if compiled.isinsert:
            table = compiled.compile_state.dml_table
            auto = getattr(table, "autoincrement_column", None)
            self.pk = [(c.key, c is auto) for c in table.primary_key]


    def result_processors(self, coltypes: tuple[Any, ...] | None
                          ) -> list[Callable[[Any], Any] | None] | None:
        try:
            return self.results[coltypes]
        except KeyError:
            pass
        kinds = coltypes or (None,) * len(self.types)
        procs = [t._cached_result_processor(self.dialect, k)
                 for t, k in zip(self.types, kinds, strict=False)]
        found = procs if any(p is not None for p in procs) else None
        self.results[coltypes] = found
        return found


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
             rowcount: int, lastrowid: int | None,
             coltypes: tuple[Any, ...] | None = None) -> LeanResult:
        plan = self.plan
        procs = plan.result_processors(coltypes) if plan.types else None
        if procs is not None:
            raw = [tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=False))
                   for row in raw]
        pk: tuple[Any, ...] | None = None
        if plan.pk is not None and not self.many:
            values = self.params[0]
            if plan.implicit is not None:
                returned = dict(zip(plan.implicit, raw[0], strict=False)) if raw else {}
                raw, keys = [], None
                pk = tuple(returned.get(key, values.get(key)) for key, _auto in plan.pk)
                return LeanResult(_NO_COLUMNS, iter(raw), rowcount=rowcount,
                                  returns_rows=False, inserted_primary_key=pk,
                                  lastrowid=lastrowid)
            pk = tuple(lastrowid if auto and values.get(key) is None else values.get(key)
                       for key, auto in plan.pk)
        meta = plan.meta if plan.keys or not keys else SimpleResultMetaData(keys)
        return LeanResult(meta, iter(raw),
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
    # A statement object is immutable: what it compiled to (and the literal
    # values it carries) is kept on it, so a statement built once (a module
    # constant) skips SQLAlchemy's cache key on every later call.
    # (SQLAlchemy's generative methods copy a statement's __dict__ into the
    # new statement: the memo names the statement it belongs to.)
    owner, memo = stmt.__dict__.get("_amoeba_compiled", (None, None))
    if owner != id(stmt) or memo is None:
        memo = {}
        stmt.__dict__["_amoeba_compiled"] = (id(stmt), memo)
    key = (dialect, tuple(sets[0]), many)
    reused = True
    try:
        compiled, extracted, collected, fast = memo[key]
    except KeyError:
        reused = False
        compiled, extracted, collected, _hit = stmt._compile_w_cache(
            dialect=dialect, compiled_cache=cache, column_keys=sorted(sets[0]),
            for_executemany=many, schema_translate_map=None, linting=_LINTING)
        fast = None
        if len(memo) < 16:
            memo[key] = compiled, extracted, collected, fast
    if (compiled.insert_prefetch or compiled.update_prefetch or not compiled.positional
            or compiled.schema_translate_map or (many and compiled.effective_returning)
            or (many and compiled._insertmanyvalues is not None)):
        return None
    plan: Plan | None = compiled.__dict__.get("_amoeba_plan")
    if plan is None:
        plan = compiled.__dict__["_amoeba_plan"] = Plan(compiled, dialect)
    if plan.expand_keys is not None and not many:
        own = _own(extracted)
        if reused or not own:  # (one built per call with lists of its own: not worth it)
            expanded = _expand(compiled, plan, key, memo, own, sets[0], extracted, collected)
            if expanded is not None:
                return expanded
    if fast is None and not plan.expanding:
        if not _own(extracted):
            shared = compiled.__dict__.setdefault("_amoeba_fast", {})
            fast = shared.get(key)
            if fast is None and len(shared) < 16:
                fast = shared[key] = _fast(compiled, plan, sets[0], extracted, collected)
        elif reused:  # its own values: worth finding once it is used again
            fast = _fast(compiled, plan, sets[0], extracted, collected)
        if key in memo:
            memo[key] = compiled, extracted, collected, fast
    if fast:
        slots, consts = fast
        try:
            args = [[(p[v] if proc is None else proc(p[v])) if named else v
                     for named, v, proc in slots] for p in sets]
        except KeyError:
            pass  # a parameter set without a key the first had: SQLAlchemy's way says why
        else:
            return Bound(plan, plan.sql, args, many,
                         [{**consts, **p} for p in sets] if plan.pk is not None else [])
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


def _own(extracted: Any) -> bool:
    """Does the statement carry values of its own?  When not (``table.insert()``,
    a select of bare bindparams), what :func:`_fast` finds holds for every
    statement that compiles to the same form, so a statement built per call
    finds it on the compiled form SQLAlchemy's cache hands back."""
    return any(b.value is not None or b.callable is not None for b in extracted or ())


class _Given:
    """Stands for a caller's parameter in :func:`_fast`'s one trial binding."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


Slots = list[tuple[bool, Any, Callable[[Any], Any] | None]]


def _fast(compiled: Any, plan: Plan, given: Mapping[str, Any], extracted: Any,
          collected: Any) -> tuple[Slots, dict[str, Any]] | bool:
    """Where each of the driver's parameters of ``compiled`` comes from, for
    parameter sets with the keys of ``given``: (True, the caller's key, its
    bind processor) or (False, the statement's own value, processed), and
    those own values by name.  Found once by letting SQLAlchemy bind stand-ins
    for the caller's values; later calls then skip ``construct_params``.
    False when a value would be computed per call (a bind with a callable)."""
    if any(b.callable is not None for b in compiled.binds.values()):
        return False
    try:
        trial = compiled.construct_params({k: _Given(k) for k in given}, escape_names=False,
                                          extracted_parameters=extracted,
                                          _collected_params=collected)
    except Exception:  # a required parameter missing: the real call says which
        return False
    procs = plan.processors
    slots: Slots = []
    consts: dict[str, Any] = {}
    for name in plan.positions:
        value = trial[name]
        proc = procs.get(name)
        if isinstance(value, _Given):
            slots.append((True, value.name, proc))
        else:
            consts[name] = value
            slots.append((False, value if proc is None else proc(value), None))
    for name, value in trial.items():  # not a driver's parameter, still a value of the row
        if not isinstance(value, _Given):
            consts.setdefault(name, value)
    return slots, consts


class _Item:
    """Stands for element ``index`` of a caller's list in :func:`_fast_expanding`'s trial."""

    __slots__ = ("index", "name")

    def __init__(self, name: str, index: int):
        self.name = name
        self.index = index


# (kind, a, b, processor): kind 0, the value a; 1, the caller's value a;
# 2, element b of the caller's list a.
Expanded = tuple[str, list[tuple[int, Any, int, Callable[[Any], Any] | None]], dict[str, Any]]
MAX_LENGTHS = 256  # expansions kept per statement (or compiled form): one per list length


def _expand(compiled: Any, plan: Plan, key: Any, memo: dict[Any, Any], own: bool,
            given: Mapping[str, Any], extracted: Any, collected: Any) -> Bound | None:
    """``given`` bound for a statement with ``IN`` lists from the expansion
    found for these lists' lengths; None to go SQLAlchemy's way."""
    try:
        lengths = tuple(len(given[k]) if k in given else -1 for k in plan.expand_keys or ())
    except TypeError:  # not a list: SQLAlchemy's way says what is wrong
        return None
    store: dict[Any, Expanded | None] = (
        memo.setdefault("expanded", {}) if own
        else compiled.__dict__.setdefault("_amoeba_expanded", {}))
    try:
        entry = store[(key, lengths)]
    except KeyError:
        entry = _fast_expanding(compiled, plan, given, extracted, collected)
        if len(store) < MAX_LENGTHS:
            store[(key, lengths)] = entry
    if entry is None:
        return None
    sql, slots, consts = entry
    try:
        args = [a if kind == 0 else (given[a] if kind == 1 else given[a][b]) if proc is None
                else proc(given[a] if kind == 1 else given[a][b])
                for kind, a, b, proc in slots]
    except (KeyError, IndexError, TypeError):
        return None
    return Bound(plan, sql, [args], False,
                 [{**consts, **given}] if plan.pk is not None else [])


def _fast_expanding(compiled: Any, plan: Plan, given: Mapping[str, Any], extracted: Any,
                    collected: Any) -> Expanded | None:
    """As :func:`_fast`, for a statement with ``IN`` lists of the lengths of
    those in ``given``: the expanded SQL, where each driver parameter comes
    from (a list's element included) and the statement's own values."""
    if any(b.callable is not None for b in compiled.binds.values()):
        return None
    keys = set(plan.expand_keys or ())
    stand: dict[str, Any] = {k: [_Item(k, i) for i in range(len(v))] if k in keys else _Given(k)
                             for k, v in given.items()}
    try:
        trial = compiled.construct_params(stand, escape_names=False,
                                          extracted_parameters=extracted,
                                          _collected_params=collected)
        state = compiled._process_parameters_for_postcompile(trial)
    except Exception:  # a required parameter missing: the real call says which
        return None
    procs = {**plan.processors, **state.processors}
    slots: list[tuple[int, Any, int, Callable[[Any], Any] | None]] = []
    for name in state.positiontup or ():
        value, proc = trial[name], procs.get(name)
        if isinstance(value, _Given):
            slots.append((1, value.name, 0, proc))
        elif isinstance(value, _Item):
            slots.append((2, value.name, value.index, proc))
        elif isinstance(value, list):  # a stand-in list left whole: not expanded as expected
            return None
        else:
            slots.append((0, value if proc is None else proc(value), 0, None))
    consts = {k: v for k, v in trial.items() if not isinstance(v, _Given | _Item | list)}
    return state.statement, slots, consts


async def asyncpg_execute(adapted: Any, bound: Bound, *, begin: bool) -> LeanResult:
    """``bound`` on SQLAlchemy's asyncpg adapter of a connection, as its cursor
    runs a statement (its prepared-statement cache, its error translation),
    without the cursor and the execution context.  ``begin``: inside the
    connection's transaction, started here if SQLAlchemy has not yet."""
    async with adapted._execute_mutex:
        if begin and adapted._transaction is None:
            await adapted._start_transaction()
        try:
            prepared, attributes = await adapted._prepare(bound.sql,
                                                          adapted._invalidate_schema_cache_asof)
            if bound.many:
                await prepared.executemany(bound.args)
                return bound.rows([], None, -1, None)
            rows = await prepared.fetch(*bound.args[0])
            status = prepared.get_statusmsg() or ""
        except Exception as error:
            adapted._handle_exception(error)  # raises SQLAlchemy's DBAPI-style error
            raise
    word, _, count = status.rpartition(" ")
    rowcount = int(count) if count.isdigit() and word else -1
    keys = [a.name for a in attributes] if attributes else None
    coltypes = tuple(a.type.oid for a in attributes) if attributes else None
    return bound.rows(rows, keys, rowcount, None, coltypes)


def supported(dialect: Dialect) -> bool:
    """Do SQLAlchemy's internals still look as :func:`bind` expects?"""
    t = sa.table("t", sa.column("a"), sa.column("b"))
    try:
        bound = bind(sa.select(t.c.a).where(t.c.b == sa.bindparam("x"), t.c.a.in_([1, 2])),
                     {"x": 3}, dialect, None)
        listed = bind(sa.select(t.c.a).where(t.c.b.in_(sa.bindparam("ids", expanding=True))),
                      {"ids": [4, 5]}, dialect, None)  # the expansion found per length
    except (AttributeError, TypeError, KeyError):
        return False
    if bound is None or not bound.args or bound.args[0][:1] != [3] or len(bound.args[0]) != 3:
        return False
    if listed is None or listed.args != [[4, 5]]:
        return False
    if dialect.driver == "asyncpg":  # the adapter's internals asyncpg_execute uses
        from sqlalchemy.dialects.postgresql import asyncpg as adapter

        cls = adapter.AsyncAdapt_asyncpg_connection
        return all(hasattr(cls, name) for name in (
            "_start_transaction", "_prepare", "_handle_exception", "_execute_mutex",
            "_transaction", "_invalidate_schema_cache_asof"))
    return True
