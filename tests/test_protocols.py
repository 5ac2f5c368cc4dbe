"""A typing.Protocol dependency binds once, at startup, to the one service
implementing it (or the one App(bind=...) names); none or several is an
error naming them; a remote caller's stub has only the protocol's methods."""

from __future__ import annotations

from typing import Protocol

import pytest
from protoapp.app import Clock, English, French, Front, Greeter, Ticker, app

from amoeba import App, Service
from amoeba.testing import app_fixture

client = app_fixture(app)


async def test_bound_and_restricted_in_every_mode(client):
    r = await client.get("/hello/ann")
    assert r.status == 200, r.body
    body = r.json()
    assert body["text"] == "bonjour ann"  # bind={Greeter: French}
    assert isinstance(body["tick"], int)
    # A stub (remote, strict, or the metering one metrics put in front of a local
    # instance) has the protocol's methods only.
    kind = {"inprocess": "Local", "strict": "Local", "processes": "Remote"}[client.mode]
    assert kind in body["clock"] and body["has_reset"] is False


def test_dependencies_name_the_bound_services():
    deps = app.specs["front"].dependencies
    assert deps == {"clock": "ticker", "greeter": "french"}


def test_no_implementation_names_what_is_missing():
    class Absent(Protocol):
        async def fly(self) -> None: ...

    class Needs(Service):
        thing: Absent

    Needs.__annotations__["thing"] = Absent  # a local class: give the hint its object
    with pytest.raises(ValueError, match=r"Needs.thing is a .*Absent, which no service of the "
                                         r"app implements \(it needs: fly\)"):
        App("x", services=[Needs, Ticker], bind={})


def test_several_implementations_are_named():
    with pytest.raises(ValueError, match=r"several services implement: English, French; choose "
                                         r"one with App\(..., bind=\{Greeter: English\}\)"):
        App("x", services=[Ticker, English, French, Front])


def test_bind_must_name_an_implementation():
    with pytest.raises(ValueError, match="Ticker is not a service of the app implementing Greeter"):
        App("x", services=[Ticker, English, French, Front], bind={Greeter: Ticker})  # type: ignore[dict-item]


def test_one_implementation_binds_itself():
    a = App("x", services=[Ticker, English, Front])
    assert a.specs["front"].dependencies == {"clock": "ticker", "greeter": "english"}
    assert a.service_for(Clock) == "ticker" and a.service_for(Greeter) == "english"
    assert Front in [s.cls for s in a.specs.values()] and French not in [s.cls for s in a.specs.values()]
