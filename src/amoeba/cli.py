"""``amoeba run | check | db | events | deploy``, and ``status | advise | graph``
(from ``amoeba.observe.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from amoeba.deploy import cli as deploy_cli
from amoeba.observe.cli import add_parsers as observe_parsers
from amoeba.resource import ResourceContext
from amoeba.topology import Topology, TopologyError

__all__ = ["main"]


def _check(path: str, target: str = "run") -> int:
    """``target``: where the topology will run.  ``k8s`` also refuses what a
    pod-per-replica orchestrator would break: replicas of a process whose data
    is a SQLite file (each pod would keep its own copy)."""
    from amoeba.deploy.plan import per_pod_problems
    from amoeba.runtime.host import data_dir
    from amoeba.runtime.preflight import preflight
    from amoeba.runtime.process import load_bound, report

    try:
        app, topo = load_bound(path)
        per_pod = per_pod_problems(topo, app)
        if per_pod and target == "k8s":
            raise TopologyError(per_pod)
    except TopologyError as exc:
        report(path, exc.problems)
        return 1
    problems = preflight(topo, app, data_dir())
    if problems:
        report(path, problems)
        return 1
    print(f"{path}: ok — topology {topo.name!r} of app {app.name!r}")
    for proc in topo.processes.values():
        listeners = ", ".join(
            f"{'public' if lst.public else 'private'} {lst.host}:{lst.port}" for lst in proc.listeners)
        reps = f" x{proc.replicas}" if proc.replicas > 1 else ""
        print(f"  {proc.name}{reps}: {', '.join(proc.services)}  [{listeners}]")
    for p in per_pod:  # fine on one host, where the replicas share the file
        print(f"  note: {p.key}: the replicas share SQLite files on this host; on Kubernetes "
              f"`amoeba check --target k8s` and `amoeba deploy k8s` refuse it")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Exit codes: ``runtime/preflight.py`` (78, EX_CONFIG: what ``check`` reports)."""
    from amoeba.runtime.host import data_dir
    from amoeba.runtime.preflight import EX_CONFIG, preflight
    from amoeba.runtime.process import load_bound, report, run_process

    try:
        if args.process:
            return run_process(args.topology, args.process, args.replica, strict=args.strict)
        app, topo = load_bound(args.topology)
    except TopologyError as exc:
        report(args.topology, exc.problems)
        return EX_CONFIG
    except (KeyError, ValueError) as exc:
        print(f"amoeba run: {exc.args[0]}", file=sys.stderr)
        return 2
    problems = preflight(topo, app, data_dir())
    if problems:
        report(args.topology, problems)
        return EX_CONFIG
    from amoeba.runtime.supervisor import Supervisor

    return asyncio.run(Supervisor(args.topology, topo, app=app, strict=args.strict).run())


def _database_context(topo: Topology, service: str, owner: type) -> ResourceContext:
    """What a running process would open ``service``'s Database with, minus the
    migration on open: the commands act on the database, they do not start it."""
    from amoeba.runtime.host import data_dir

    settings = dict(topo.settings.extra)
    settings["database"] = {**dict(settings.get("database") or {}), "migrate": False}
    url = topo.resources.get("database")
    return ResourceContext(service, url.replace("{service}", service) if url else None,
                           data_dir(), settings, owner=owner)


def _db(args: argparse.Namespace) -> int:
    """``amoeba db upgrade | current | downgrade``: the migrations of every
    service with a ``Database``, on the URL and settings the topology gives."""
    from amoeba.data import Database
    from amoeba.runtime.process import load_bound

    try:
        app, topo = load_bound(args.topology)
    except TopologyError as exc:
        print(f"{args.topology}: {len(exc.problems)} problem(s)\n{exc}", file=sys.stderr)
        return 1
    targets = {name: spec for name, spec in app.specs.items()
               if any(issubclass(r, Database) for r in spec.resources.values())}
    wanted = getattr(args, "service", None)
    if wanted is not None:
        if wanted not in targets:
            print(f"amoeba db: app {app.name!r} has no service {wanted!r} with a Database; "
                  f"those with one: {', '.join(targets) or '(none)'}", file=sys.stderr)
            return 2
        targets = {wanted: targets[wanted]}
    if not targets:
        print(f"amoeba db: no service of app {app.name!r} has a Database resource")
        return 0
    async def apply() -> int:
        failed = 0
        for name, spec in targets.items():
            ctx = _database_context(topo, name, spec.cls)  # the command migrates, not open()
            try:
                print(await _db_one(args, ctx), flush=True)
            except Exception as exc:
                failed += 1
                print(f"{name}: {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1 if failed else 0

    return asyncio.run(apply())


async def _db_one(args: argparse.Namespace, ctx: ResourceContext) -> str:
    from amoeba.data import Database, migrate

    db = await Database.open(ctx)
    try:
        where = f"({db.dialect} {db.path or db.safe_url})"
        if db.migrations is None:
            return f"{ctx.service}: no migrations {where}"
        if args.action == "current":
            return f"{ctx.service}: {await migrate.current(db) or 'base'} {where}"
        if args.action == "upgrade":
            old, new = await migrate.upgrade(db, args.to or "head")
        else:
            old, new = await migrate.downgrade(db, args.to)
        verb = "upgraded" if args.action == "upgrade" else "downgraded"
        return f"{ctx.service}: {verb} {old or 'base'} -> {new or 'base'} {where}"
    finally:
        await db.aclose()


def _events(args: argparse.Namespace) -> int:
    """``amoeba events dead-letters | replay``: the dead letters of every service
    that handles events and has a ``Database``."""
    from amoeba.data import Database
    from amoeba.events import admin
    from amoeba.runtime.process import load_bound

    try:
        app, topo = load_bound(args.topology)
    except TopologyError as exc:
        print(f"{args.topology}: {len(exc.problems)} problem(s)\n{exc}", file=sys.stderr)
        return 1
    targets = {n: s for n, s in app.specs.items()
               if s.handlers and any(issubclass(r, Database) for r in s.resources.values())}
    if args.service is not None:
        if args.service not in targets:
            print(f"amoeba events: {args.service!r} is not a service of app {app.name!r} that "
                  f"handles events with a Database; those are: {', '.join(targets) or '(none)'}",
                  file=sys.stderr)
            return 2
        targets = {args.service: targets[args.service]}
    async def run() -> int:
        total = 0
        for name, spec in targets.items():
            db = await Database.open(_database_context(topo, name, spec.cls))
            try:
                if args.action == "replay":
                    moved = await admin.replay(db, None if args.all else args.id)
                    total += moved
                    print(f"{name}: {moved} dead letter(s) back in the outbox; the running "
                          f"service relays them")
                    continue
                rows = await admin.list_dead_letters(db)
                total += len(rows)
                for r in rows:
                    print(f"{name}  {r.event_id}  {r.name}  {r.handler}  attempts={r.attempts}  "
                          f"{r.failed_at:%Y-%m-%d %H:%M:%S}  {r.error[:120]}")
            finally:
                await db.aclose()
        if args.action == "dead-letters":
            print(f"{total} dead letter(s)")
        return 0

    return asyncio.run(run())


def _version() -> str:
    """The installed distribution's version (what ``pip show amoeba`` says)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("amoeba")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed; pip install -e . in the checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="amoeba", description="Run a system of services as a monolith or as microservices.")
    parser.add_argument("--version", action="version", version=f"amoeba {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a topology (every process, or one with --process)")
    run.add_argument("topology", help="path to a topology YAML file")
    run.add_argument("--process", help="run only this process (what systemd/Kubernetes run)")
    run.add_argument("--replica", type=int, default=0, help="replica index of --process")
    run.add_argument("--strict", action="store_true",
                     help="send every local call through the wire codec (catches shared state)")
    check = sub.add_parser("check", help="validate a topology without starting anything")
    check.add_argument("topology")
    check.add_argument("--target", choices=("run", "systemd", "compose", "k8s"), default="run",
                       help="where it will run: k8s also refuses replicas of a process whose "
                            "data is a SQLite file (each pod would have its own)")
    db = sub.add_parser("db", help="database migrations of the services (Alembic)")
    db_sub = db.add_subparsers(dest="action", required=True)
    up = db_sub.add_parser("upgrade", help="upgrade every service's schema (to head)")
    up.add_argument("topology")
    up.add_argument("--service", help="only this service")
    up.add_argument("--to", help="target revision (default: head)")
    cur = db_sub.add_parser("current", help="print each service's revision")
    cur.add_argument("topology")
    down = db_sub.add_parser("downgrade", help="downgrade one service's schema")
    down.add_argument("topology")
    down.add_argument("--service", required=True)
    down.add_argument("--to", required=True, help="target revision (base: empty)")
    events = sub.add_parser("events", help="dead letters of event handlers: list, replay")
    ev_sub = events.add_subparsers(dest="action", required=True)
    listing = ev_sub.add_parser("dead-letters", help="list events whose handler gave up")
    listing.add_argument("topology")
    listing.add_argument("--service", help="only this consuming service")
    again = ev_sub.add_parser("replay", help="hand dead letters to their handler again")
    again.add_argument("topology")
    again.add_argument("--service", help="only this consuming service")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", help="an event id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    observe_parsers(sub)
    deploy_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return int(args.handler(args))
    if args.command == "events":
        return _events(args)
    if args.command == "check":
        return _check(args.topology, args.target)
    if args.command == "db":
        return _db(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
