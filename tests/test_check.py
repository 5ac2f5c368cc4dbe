"""`amoeba check` catches what `amoeba run` would hit, and `run` stops where `check` would.

Each failure of issue 11 is reproduced here: a driver missing for a URL of
`resources:` (simulated in a subprocess by a `sitecustomize` that puts None in
`sys.modules`, never by uninstalling), unknown keys of `settings:` and
`resources:`, a route on a plain `def`, a type the codec cannot encode or
describe, the line of a key whose value is a block.  Every problem names the
file, the line, the key and the fix; `run` exits 78 (EX_CONFIG) with it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
from pathlib import Path

import msgspec
import pytest

from amoeba import App, Service, get, post
from amoeba.cli import main
from amoeba.drivers import DRIVERS, MissingDriver, UnsupportedURL, extra_for_url, require
from amoeba.events import Event, on_event
from amoeba.resource import Resource, ResourceContext
from amoeba.runtime.preflight import EX_CONFIG
from amoeba.spec import SpecError, spec_of
from amoeba.testing import free_port
from amoeba.topology import TopologyError, load_topology
from amoeba.topology.schema import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop" / "topologies" / "microservices.yaml"

BLOCKER = """\
import os, sys
# Make these modules unimportable, as if not installed: find_spec() says None
# and `import` raises ImportError.
for _name in os.environ.get("AMOEBA_TEST_BLOCK", "").split(","):
    if _name:
        sys.modules[_name] = None
"""


def amoeba(tmp: Path, *args: str, block: tuple[str, ...] = (),
           env: dict[str, str | None] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m amoeba ARGS` with ``block`` unimportable; (result, seconds).
    ``env``: more variables; None removes one."""
    site = tmp / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    full: dict[str, str | None] = {**os.environ, "PYTHONPATH": path,
                                   "AMOEBA_TEST_BLOCK": ",".join(block),
                                   "AMOEBA_DATA_DIR": str(tmp / "data"), **(env or {})}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "amoeba", *args], capture_output=True, text=True,
                       env={k: v for k, v in full.items() if v is not None}, cwd=tmp, timeout=120)
    return r, time.monotonic() - start


def shop_copy(tmp: Path, replace: dict[str, str] | None = None) -> Path:
    """The shop's microservices topology, runnable from ``tmp`` (free ports)."""
    text = SHOP.read_text().replace("pythonpath: ../..", f"pythonpath: {ROOT / 'examples'}")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    p = tmp / "microservices.yaml"
    p.write_text(text)
    return p


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def shop_ports() -> dict[str, str]:
    return {k: str(free_port()) for k in ("PORT", "ACCOUNTS_PORT", "CATALOG_PORT", "ORDERS_PORT",
                                          "NOTIFICATIONS_PORT")}


# -- drivers ------------------------------------------------------------------

def test_missing_drivers_of_the_shop_all_at_once_in_check_and_run(tmp_path):
    """The issue's crash loop: asyncpg, redis-py and nats-py missing.  `check`
    names all three with their extras; `run --process` and `run` exit 78 with
    the same lines, in seconds, before listening."""
    topo = shop_copy(tmp_path)
    db, cache, events = (line_of(topo, f"  {k}: ${{") for k in ("database", "cache", "events"))
    expected = [
        f"{topo}:{db}: resources.database: 'postgresql://postgres@127.0.0.1:5432/shop' needs "
        f"asyncpg, which is not installed\n    fix: pip install 'amoeba[postgres]'",
        f"{topo}:{cache}: resources.cache: 'redis://127.0.0.1:6379/0' needs redis, which is not "
        f"installed\n    fix: pip install 'amoeba[redis]'",
        f"{topo}:{events}: resources.events: 'nats://127.0.0.1:4222' needs nats-py, which is not "
        f"installed\n    fix: pip install 'amoeba[nats]'",
    ]
    block = ("asyncpg", "redis", "nats")
    env: dict[str, str | None] = {"DATABASE_URL": None, "REDIS_URL": None, "EVENTS_URL": None,
                                  **shop_ports()}
    check, _ = amoeba(tmp_path, "check", str(topo), block=block, env=env)
    one, one_s = amoeba(tmp_path, "run", str(topo), "--process", "gateway", block=block, env=env)
    every, every_s = amoeba(tmp_path, "run", str(topo), block=block, env=env)
    assert check.returncode == 1, check.stderr
    assert check.stderr == f"{topo}: 3 problem(s)\n" + "\n".join(expected) + "\n"
    assert "Traceback" not in check.stderr
    for r, seconds in ((one, one_s), (every, every_s)):
        assert r.returncode == EX_CONFIG, r.stderr
        assert r.stderr.endswith(f"{topo}: 3 problem(s)\n" + "\n".join(expected) + "\n"), r.stderr
        assert "Traceback" not in r.stderr and seconds < 30, (seconds, r.stderr)
    # The same installation without the blocker: the check passes.
    ok, _ = amoeba(tmp_path, "check", str(topo), env=env)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(("kind", "url", "module", "package", "extra"), [
    ("database", "postgresql://u:secret@db:5432/shop", "asyncpg", "asyncpg", "postgres"),
    ("database", "postgres://db/shop", "asyncpg", "asyncpg", "postgres"),
    ("database", "mysql://root@db:3306/shop", "aiomysql", "aiomysql", "mysql"),
    ("database", "mariadb://root@db/shop", "aiomysql", "aiomysql", "mysql"),
    ("cache", "redis://r:6379/0?prefix=x:", "redis", "redis", "redis"),
    ("events", "nats://n:4222", "nats", "nats-py", "nats"),
    ("events", "redis://r:6379/0", "redis", "redis", "redis"),
    ("events", "kafka://k:9092", "aiokafka", "aiokafka", "kafka"),
])
def test_each_url_names_its_driver_and_extra(tmp_path, capsys, monkeypatch, kind, url, module,
                                              package, extra):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = tmp_path / "t.yaml"
    topo.write_text(textwrap.dedent(f"""\
        app: tickets.app:app
        pythonpath: {ROOT / 'examples'}
        resources:
          {kind}: "{url}"
        processes:
          main: {{services: "*", listeners: [{{port: {free_port()}}}]}}
        """))
    shown = url.replace(":secret@", ":***@")
    assert main(["check", str(topo)]) == 1
    assert capsys.readouterr().err == (
        f"{topo}: 1 problem(s)\n{topo}:4: resources.{kind}: {shown!r} needs {package}, which is "
        f"not installed\n    fix: pip install 'amoeba[{extra}]'\n")
    # The runtime picks its driver from the same table, and says the same line.
    with pytest.raises(MissingDriver) as info:
        require(kind, url)
    assert str(info.value) == (f"resources.{kind}: {shown!r} needs {package}, which is not "
                               f"installed; fix: pip install 'amoeba[{extra}]'")


def test_the_runtime_opens_through_the_table(monkeypatch, tmp_path):
    """Database, cache and event bus raise the table's one line, not an ImportError
    from deep inside a driver."""
    from amoeba.data.cache import redis_client
    from amoeba.data.database import async_url
    from amoeba.events.bus import open_bus

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setitem(sys.modules, "nats", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDriver, match=r"^resources.database: .*amoeba\[postgres\]'$"):
        async_url("postgresql://db/shop")
    with pytest.raises(MissingDriver, match=r"^resources.events: .*amoeba\[nats\]'$"):
        open_bus("nats://127.0.0.1:4222", app="t")
    with pytest.raises(MissingDriver, match=r"^resources.events: .*amoeba\[redis\]'$"):
        open_bus("redis://127.0.0.1:6379/0?namespace=x", app="t")
    with pytest.raises(MissingDriver, match=r"^resources.cache: .*amoeba\[redis\]'$"):
        redis_client("redis://127.0.0.1:6379/0")
    with pytest.raises(UnsupportedURL, match=r"^resources.events: 'amqp://q' is not a supported"):
        open_bus("amqp://q", app="t")
    assert str(async_url("sqlite:///x.db").drivername) == "sqlite+amoeba"
    assert type(open_bus("memory://", app="t")).__name__ == "MemoryBus"
    assert type(open_bus(None, app="t")).__name__ == "MemoryBus"


def test_unsupported_url_is_a_problem_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = tmp_path / "t.yaml"
    topo.write_text(f"app: tickets.app:app\npythonpath: {ROOT / 'examples'}\nresources:\n"
                    f"  events: localhost:4222\n  database: mongodb://m/x\n"
                    f"processes:\n  main: {{services: '*', listeners: [{{port: {free_port()}}}]}}\n")
    assert main(["check", str(topo)]) == 1
    err = capsys.readouterr().err
    assert f"{topo}:4: resources.events: 'localhost:4222' is not a supported events URL\n" \
           f"    fix: use nats://127.0.0.1:4222" in err
    assert f"{topo}:5: resources.database: 'mongodb://m/x' is not a supported database URL" in err


def test_every_extra_of_the_table_is_declared():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for driver in DRIVERS.values():
        if driver.extra is not None:
            assert driver.extra in extras, driver
            names = [r.split(">")[0].split("[")[0].split("=")[0].strip().lower()
                     for r in extras[driver.extra]]
            assert driver.package in names, (driver, extras[driver.extra])
    assert [extra_for_url(u) for u in ("postgresql+asyncpg://h/d", "mariadb://h/d", "rediss://h",
                                       "tls://n:4222", "kafka://k:9092", "sqlite:///x", "memory://")
            ] == ["postgres", "mysql", "redis", "nats", "kafka", None, None]


# -- unknown keys -----------------------------------------------------------

def test_misspelt_resource_is_refused_not_run_on_sqlite(tmp_path):
    """`resources.databse:` ran the shop on SQLite with no word."""
    topo = shop_copy(tmp_path, {"  database: ${DATABASE_URL": "  databse: ${DATABASE_URL"})
    line = line_of(topo, "databse:")
    check, _ = amoeba(tmp_path, "check", str(topo), env=shop_ports())
    problem = (f"{topo}:{line}: resources.databse: unknown key; did you mean `database`?\n"
               f"    fix: rename it `database` (the keys of resources are: auth, cache, database, "
               f"events, sqlite)")
    assert check.returncode == 1 and problem in check.stderr, check.stderr
    run, seconds = amoeba(tmp_path, "run", str(topo), "--process", "catalog", env=shop_ports())
    assert run.returncode == EX_CONFIG and problem in run.stderr and seconds < 30, run.stderr


def test_unknown_keys_at_every_level_of_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = shop_copy(tmp_path, {"      rate: ${SHOP_RATE_USER_RATE:-10}": "      rat: 10",
                                "  max_body: 64KiB": "  max_body: 64KiB\n  deadlin: 5s\n"
                                                     "  obsrve:\n    metrics: false\n"
                                                     "  observe:\n    metrcs: false"})
    assert main(["check", str(topo)]) == 1
    err = capsys.readouterr().err
    for text, key, close in (("rat: 10", "settings.rate_limit.user.rat", "rate"),
                             ("deadlin:", "settings.deadlin", "deadline"),
                             ("obsrve:", "settings.obsrve", "observe"),
                             ("metrcs:", "settings.observe.metrcs", "metrics")):
        assert f"{topo}:{line_of(topo, text)}: {key}: unknown key; did you mean `{close}`?\n" \
               f"    fix: rename it `{close}`" in err, (key, err)
    assert "4 problem(s)" in err


class Blob(Resource):
    kind = "blob"

    @classmethod
    async def open(cls, ctx: ResourceContext) -> Blob:
        return cls()

    async def aclose(self) -> None:
        pass


class Store(Service):
    blob: Blob

    async def size(self) -> int:
        return 0


def test_app_settings_and_the_apps_own_resource_kinds_are_allowed(tmp_path):
    from amoeba.topology import bind

    topo = tmp_path / "t.yaml"
    topo.write_text("settings:\n  app: {anything: [1, 2]}\n  blob: {bucket: b}\nresources:\n"
                    "  blob: s3://b\n  blb: s3://x\nprocesses:\n  m: {services: '*', listeners: "
                    "[{port: 1}]}\n")
    with pytest.raises(TopologyError) as info:
        bind(load_topology(topo, {}), App("blobs", [Store]))
    assert [(p.key, p.line, p.message) for p in info.value.problems] == [
        ("resources.blb", 6, "unknown key; did you mean `blob`?")]


def test_the_key_table_matches_what_each_part_reads():
    """schema.py names the keys; the parts that read them must agree."""
    from amoeba.auth.tokens import _KNOWN
    from amoeba.data.database import DatabaseSettings
    from amoeba.events.runtime import EventSettings
    from amoeba.observe.config import ObserveSettings
    from amoeba.topology.loader import _SETTING_KEYS

    def keys(name: str) -> set[str]:
        value = SETTINGS[name]
        assert isinstance(value, dict)
        return set(value)

    fix = "add the key to SETTINGS in src/amoeba/topology/schema.py"
    assert keys("auth") == _KNOWN, fix
    assert keys("database") == set(DatabaseSettings._TYPES), fix
    assert keys("events") == {f.name for f in dataclasses.fields(EventSettings)}, fix
    assert keys("observe") == {f.name for f in dataclasses.fields(ObserveSettings)}, fix
    assert not _SETTING_KEYS & set(SETTINGS)  # the loader's own keys never reach extra
    # CORS and rate limits refuse what the table does not name, and take what it does.
    from amoeba.gateway.cors import Cors, CorsConfigError
    from amoeba.gateway.limits import LimitConfigError, parse_rate_limit

    assert Cors.from_settings({"origins": ["https://a.example"], "methods": ["GET"], "headers": ["X"],
                               "max_age": 1, "credentials": True}) is not None
    assert set(keys("cors")) == {"origins", "methods", "headers", "max_age", "credentials"}
    with pytest.raises(CorsConfigError):
        Cors.from_settings({"origins": ["*"], "origin": 1})
    assert parse_rate_limit({s: {"burst": 1, "rate": 1} for s in keys("rate_limit")})
    with pytest.raises(LimitConfigError):
        parse_rate_limit({"user": {"burst": 1, "rate": 1, "rat": 1}})


def test_a_settings_value_run_would_refuse_is_reported_by_check(tmp_path, capsys, monkeypatch):
    """settings.observe was read only when a process started: check said ok."""
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = tmp_path / "t.yaml"
    topo.write_text(f"app: tickets.app:app\npythonpath: {ROOT / 'examples'}\nsettings:\n"
                    f"  observe:\n    expose: sometimes\n  events: {{max_attempts: 0}}\n"
                    f"processes:\n  main: {{services: '*', listeners: [{{port: {free_port()}}}]}}\n")
    assert main(["check", str(topo)]) == 1
    err = capsys.readouterr().err
    assert f"{topo}:5: settings.observe.expose: 'sometimes'\n    fix: one of loopback, never, " \
           f"always" in err
    assert f"{topo}:6: settings.events.max_attempts: 0 is not a positive number\n" in err


def test_a_bad_edge_setting_is_reported_at_its_own_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = shop_copy(tmp_path, {"      burst: ${SHOP_RATE_USER_BURST:-20}": "      burst: -1"})
    assert main(["check", str(topo)]) == 1
    assert f"{topo}:{line_of(topo, 'burst: -1')}: settings.rate_limit.user.burst: -1 is not a whole " \
           f"number >= 1\n    fix: burst: 20\n" in capsys.readouterr().err


def test_a_key_whose_value_is_a_block_is_reported_at_its_own_line(tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text("processes:\n  main:\n    services: '*'\n    listeners:\n      - port: 1\n"
                    "    replica:\n      - 2\n")
    with pytest.raises(TopologyError) as info:
        load_topology(topo, {})
    (problem,) = info.value.problems
    assert (problem.key, problem.line) == ("processes.main.replica", 6)
    assert "did you mean `replicas`?" in problem.message
    lines = load_topology(ROOT / "examples/shop/topologies/microservices.yaml", {}).lines
    shop = (ROOT / "examples/shop/topologies/microservices.yaml").read_text().splitlines()
    for key, text in (("settings", "settings:"), ("settings.rate_limit", "  rate_limit:"),
                      ("settings.rate_limit.user", "    user:"), ("processes", "processes:")):
        assert shop[lines[key] - 1].startswith(text), (key, lines[key])


# -- service classes ----------------------------------------------------------

def write_app(tmp: Path, body: str) -> tuple[Path, str]:
    """A package with the service classes of ``body`` and its topology; (topology, module)."""
    module = f"checkapp_{uuid.uuid4().hex[:8]}"
    (tmp / module).mkdir()
    (tmp / module / "__init__.py").write_text("")
    src = textwrap.dedent("""\
        from __future__ import annotations

        import msgspec

        from amoeba import App, Service, get, post

        """) + textwrap.dedent(body)
    (tmp / module / "app.py").write_text(src)
    topo = tmp / "topo.yaml"
    topo.write_text(f"app: {module}.app:app\npythonpath: .\nprocesses:\n  main:\n    services: '*'\n"
                    f"    listeners: [{{port: {free_port()}, public: true}}]\n")
    return topo, module


def test_route_on_a_plain_def_is_refused(tmp_path):
    """Today's silent 404: a `def` with @get was dropped from the interface."""
    topo, module = write_app(tmp_path, """\
        class Shelf(Service):
            @get("/api/books")
            def books(self) -> list[str]:
                return []

        app = App("shelf", [Shelf])
        """)
    src = tmp_path / module / "app.py"
    line = line_of(src, "def books")
    problem = (f"{src}:{line}: shelf.books: @get('/api/books') is on a plain `def`; only `async def` "
               f"methods are served\n    fix: declare it `async def books(...)`")
    check, _ = amoeba(tmp_path, "check", str(topo))
    assert check.returncode == 1 and check.stderr == f"{topo}: 1 problem(s)\n{problem}\n"
    run, seconds = amoeba(tmp_path, "run", str(topo), "--process", "main")
    assert run.returncode == EX_CONFIG and run.stderr.endswith(f"{problem}\n"), run.stderr
    assert seconds < 30


def test_an_app_that_fails_on_import_is_a_problem_at_its_line(tmp_path):
    topo, module = write_app(tmp_path, """\
        import amoeba_check_not_installed_xyz

        app = App("x", [])
        """)
    src = tmp_path / module / "app.py"
    check, _ = amoeba(tmp_path, "check", str(topo))
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert (f"{src}:{line_of(src, 'import amoeba_check_not')}: app: importing '{module}.app' raised "
            f"ModuleNotFoundError: No module named 'amoeba_check_not_installed_xyz'\n    fix: install "
            f"'amoeba_check_not_installed_xyz'") in check.stderr, check.stderr
    (src).write_text(src.read_text().replace("import amoeba_check_not_installed_xyz",
                                             "LIMIT = undefined_name + 1"))
    run, _ = amoeba(tmp_path, "run", str(topo), "--process", "main")
    assert run.returncode == EX_CONFIG and "Traceback" not in run.stderr, run.stderr
    assert (f"{src}:{line_of(src, 'LIMIT =')}: app: importing '{module}.app' raised NameError: name "
            f"'undefined_name' is not defined\n    fix: fix the app's code there") in run.stderr


def test_on_event_and_idempotent_on_a_plain_def_are_refused():
    from amoeba import idempotent

    class Ledger(Service):
        @idempotent
        def total(self) -> int:
            return 0

    with pytest.raises(SpecError, match=r"Ledger.total: @idempotent is on a plain `def`"):
        spec_of(Ledger)


class Opaque:
    """A class msgspec knows nothing about."""


class Wrapped(msgspec.Struct):
    name: str
    inner: Opaque


class Tagless1(msgspec.Struct):
    a: int


class Tagless2(msgspec.Struct):
    b: int


def test_types_the_codec_cannot_encode_or_describe_are_refused():
    class Returns(Service):
        async def thing(self) -> Opaque:
            return Opaque()

    class Takes(Service):
        @post("/things")
        async def put(self, thing: Wrapped) -> None:
            pass

    class Either(Service):
        async def one(self) -> Tagless1 | Tagless2:
            return Tagless1(1)

    with pytest.raises(SpecError) as info:
        spec_of(Returns)
    assert info.value.key == "returns.thing" and info.value.line is not None
    assert ("Returns.thing: return type Opaque cannot cross the wire or be described in OpenAPI "
            f"(type <class '{__name__}.Opaque'> is not supported); fix: use a msgspec.Struct"
            ) in str(info.value)
    with pytest.raises(SpecError, match=r"Takes.put: parameter 'thing' Wrapped cannot cross the "
                                        r"wire .*Opaque'> is not supported\)"):
        spec_of(Takes)
    with pytest.raises(SpecError, match=r"Either.one: return type .*Tagless1 \| .*Tagless2 cannot "
                                        r"cross the wire .*must be tagged"):
        spec_of(Either)


class Shipped(Event):
    parcel: Opaque


class Sender(Service):
    publishes = (Shipped,)


class Receiver(Service):
    @on_event(Shipped)
    async def shipped(self, event: Shipped) -> None:
        pass


def test_events_the_codec_cannot_encode_are_refused():
    with pytest.raises(SpecError, match=r"Sender.publishes: event .*Shipped cannot cross the wire"):
        spec_of(Sender)
    with pytest.raises(SpecError) as info:
        spec_of(Receiver)
    assert info.value.key == "receiver.shipped" and info.value.message.startswith(
        "event Shipped cannot cross the wire or be described in OpenAPI (type <class")


def test_a_route_naming_a_missing_parameter_is_located_at_its_def():
    class Lost(Service):
        @get("/items/{item_id}")
        async def item(self, id: int) -> int:
            return id

    with pytest.raises(SpecError) as info:
        spec_of(Lost)
    e = info.value
    assert (e.key, e.file, e.message, e.fix) == (
        "lost.item", __file__, "route GET /items/{item_id} has {item_id} but the method has no "
        "parameter 'item_id'", "add a parameter `item_id`, or take {item_id} out of the path")
    assert Path(__file__).read_text().splitlines()[e.line - 1].strip().startswith("async def item")


def test_unencodable_return_type_fails_check_and_run_not_openapi(tmp_path):
    """It passed check, answered 500 and broke /openapi.json for the whole app."""
    topo, module = write_app(tmp_path, """\
        class Point:
            def __init__(self, x: int) -> None:
                self.x = x

        class Plot(Service):
            @get("/api/points/{n}")
            async def point(self, n: int) -> Point:
                return Point(n)

        app = App("plot", [Plot])
        """)
    src = tmp_path / module / "app.py"
    line = line_of(src, "async def point")
    check, _ = amoeba(tmp_path, "check", str(topo))
    assert check.returncode == 1, check.stderr
    head = f"{src}:{line}: plot.point: return type Point cannot cross the wire or be " \
           f"described in OpenAPI (type <class '{module}.app.Point'> is not supported)\n    fix: "
    assert head in check.stderr, check.stderr
    run, seconds = amoeba(tmp_path, "run", str(topo), "--process", "main")
    assert run.returncode == EX_CONFIG and head in run.stderr and seconds < 30, run.stderr


def test_the_example_apps_still_describe_themselves():
    """Every example and test app passes the stricter spec build (no false alarm)."""
    import authapp.app
    import demo.app
    import evdemo.app
    import eventapp.app
    import shop.app
    import sqlapp.app
    import tickets.app

    from amoeba.codec import codec_for
    from amoeba.gateway.openapi import openapi_document

    for module in (authapp.app, demo.app, eventapp.app, evdemo.app, shop.app, sqlapp.app,
                   tickets.app):
        app = module.app
        codecs = [codec_for(m) for s in app.specs.values() for m in s.methods.values()]
        doc = openapi_document(app, [c for c in codecs if c.spec.route is not None])
        assert doc["paths"], module


async def test_a_driver_missing_at_start_anyway_is_the_same_one_line(tmp_path, monkeypatch):
    """Behind the start-up check, the host opening a resource says the table's
    line too (what `amoeba run` prints, exit 78), never an ImportError from deep
    inside SQLAlchemy."""
    from sqlapp.app import app as sqlapp

    from amoeba.runtime.host import Host
    from amoeba.topology import bind

    topo = tmp_path / "t.yaml"
    topo.write_text("resources:\n  database: postgresql://postgres@127.0.0.1:1/x\n"
                    "processes:\n  m: {services: '*', listeners: [{port: 0}]}\n")
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    host = Host(sqlapp, bind(load_topology(topo, {}), sqlapp), "m", listen=False, data=tmp_path)
    with pytest.raises(MissingDriver) as info:
        await host.start()
    assert str(info.value) == ("resources.database: 'postgresql://postgres@127.0.0.1:1/x' needs "
                               "asyncpg, which is not installed; fix: pip install 'amoeba[postgres]'")


def test_events_between_processes_without_a_broker_are_refused(tmp_path, capsys):
    """The in-process bus cannot carry an event to a handler in another process:
    check says so instead of letting the events vanish."""
    from amoeba.cli import main

    shop = Path(__file__).resolve().parent.parent / "examples" / "shop" / "topologies"
    text = (shop / "microservices.yaml").read_text().replace(
        "pythonpath: ../..", f"pythonpath: {shop.parent.parent}")
    events = "  events: ${EVENTS_URL:-nats://127.0.0.1:4222}\n"
    assert events in text
    bad = tmp_path / "no-broker.yaml"
    bad.write_text(text.replace(events, ""))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "no-broker.yaml:" in err and "resources" in err
    assert ("event 'shop.order_placed' is published by orders (process 'orders') and handled by "
            "notifications (process 'notifications')") in err
    assert "set resources.events to a broker" in err
    monolith = tmp_path / "one-process.yaml"  # the same app in one process needs no broker
    monolith.write_text((shop / "monolith.yaml").read_text().replace(
        "pythonpath: ../..", f"pythonpath: {shop.parent.parent}"))
    assert main(["check", str(monolith)]) == 0
