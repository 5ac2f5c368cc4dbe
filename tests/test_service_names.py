"""How a class name becomes a service name (the rule the README states)."""

from __future__ import annotations

import pytest

from amoeba import App, Service, post
from amoeba.events import Event
from amoeba.service import snake_name


@pytest.mark.parametrize(("cls", "service"), [
    ("Vacancy", "vacancy"),
    ("TicketOffice", "ticket_office"),
    ("GREETER", "greeter"),
    ("HTTPGateway", "http_gateway"),
    ("APIKeys", "api_keys"),
    ("OrdersV2", "orders_v2"),
    ("HTTP2Gateway", "http2_gateway"),
    ("OAuthClient", "o_auth_client"),
    ("Orders_V2", "orders_v2"),
    ("greeter", "greeter"),
])
def test_class_name_to_service_name(cls: str, service: str) -> None:
    assert snake_name(cls) == service


class GREETER(Service):
    @post("/hello")
    async def hello(self, who: str) -> str:
        return f"hello {who}"


class HTTPFront(Service):
    greeter: GREETER


class Custom(Service):
    name = "front_desk"


def test_the_rule_names_services_and_name_overrides_it() -> None:
    app = App("names", [GREETER, HTTPFront, Custom])
    assert list(app.specs) == ["greeter", "http_front", "front_desk"]
    assert app.specs["http_front"].dependencies == {"greeter": "greeter"}


class HTTPHit(Event):
    path: str


class Named(Event):
    event_name = "shop.named"


def test_events_follow_the_same_rule_unless_named() -> None:
    assert (HTTPHit.event_name, Named.event_name) == ("http_hit", "shop.named")
