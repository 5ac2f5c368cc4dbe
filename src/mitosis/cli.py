"""``mitosis run | check``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mitosis.topology import TopologyError

__all__ = ["main"]


def _check(path: str) -> int:
    from mitosis.runtime.process import load_bound

    try:
        app, topo = load_bound(path)
    except TopologyError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)\n{exc}", file=sys.stderr)
        return 1
    print(f"{path}: ok — topology {topo.name!r} of app {app.name!r}")
    for proc in topo.processes.values():
        listeners = ", ".join(
            f"{'public' if lst.public else 'private'} {lst.host}:{lst.port}" for lst in proc.listeners)
        reps = f" x{proc.replicas}" if proc.replicas > 1 else ""
        print(f"  {proc.name}{reps}: {', '.join(proc.services)}  [{listeners}]")
    return 0


def _run(args: argparse.Namespace) -> int:
    from mitosis.runtime.process import load_bound, run_process

    try:
        if args.process:
            return run_process(args.topology, args.process, args.replica, strict=args.strict)
        _, topo = load_bound(args.topology)
    except TopologyError as exc:
        print(f"{args.topology}: {len(exc.problems)} problem(s)\n{exc}", file=sys.stderr)
        return 1
    except (KeyError, ValueError) as exc:
        print(f"mitosis run: {exc.args[0]}", file=sys.stderr)
        return 2
    from mitosis.runtime.supervisor import Supervisor

    return asyncio.run(Supervisor(args.topology, topo, strict=args.strict).run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mitosis", description="Run a system of services as a monolith or as microservices.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a topology (every process, or one with --process)")
    run.add_argument("topology", help="path to a topology YAML file")
    run.add_argument("--process", help="run only this process (what systemd/Kubernetes run)")
    run.add_argument("--replica", type=int, default=0, help="replica index of --process")
    run.add_argument("--strict", action="store_true",
                     help="send every local call through the wire codec (catches shared state)")
    check = sub.add_parser("check", help="validate a topology without starting anything")
    check.add_argument("topology")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.topology)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
