"""Every ``SpecError`` a service class can cause, with the words that tell the fix.

Classes are built inside each test so that a hint naming something undefined
is really undefined where ``typing.get_type_hints`` looks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import pytest

from amoeba import Header, Principal, Service, get, post
from amoeba.events import Event, on_event
from amoeba.spec import SpecError, spec_of

if TYPE_CHECKING:
    from decimal import Decimal  # only for the type checker: undefined at run time


class Paid(Event):
    event_name = "test.paid"
    amount: int


class Refunded(Event):
    event_name = "test.refunded"
    amount: int


def refused(cls: type, *words: str) -> str:
    with pytest.raises(SpecError) as info:
        spec_of(cls)
    text = str(info.value)
    for w in words:
        assert w in text, text
    return text


def test_a_hint_naming_something_undefined() -> None:
    class Till(Service):
        async def total(self) -> Decimal: ...

    refused(Till, "Till.total", "not defined", "import it at module level (not only under TYPE_CHECKING)")


def test_not_a_service() -> None:
    refused(int, "is not a subclass of amoeba.Service")  # type: ignore[arg-type]


def test_publishes_something_that_is_not_an_event() -> None:
    class Till(Service):
        publishes = (Paid, "refunded")

    refused(Till, "Till.publishes", "'refunded' is not an Event subclass")


def test_an_event_handler_takes_one_parameter() -> None:
    class Audit(Service):
        @on_event(Paid)
        async def paid(self, event: Paid, extra: int) -> None: ...

    refused(Audit, "Audit.paid", "takes exactly one parameter, the event")


def test_an_event_handler_annotated_with_another_event() -> None:
    class Audit(Service):
        @on_event(Paid)
        async def paid(self, event: Refunded) -> None: ...

    refused(Audit, "Audit.paid", "@on_event(Paid) but the parameter is annotated Refunded")


def test_a_method_without_a_return_hint() -> None:
    class Till(Service):
        async def total(self):  # type: ignore[no-untyped-def]
            return 1

    refused(Till, "Till.total", "no return type hint", "add one (-> None if it returns nothing)")


def test_star_args_cannot_cross_the_wire() -> None:
    class Till(Service):
        async def total(self, *amounts: int) -> int: ...

    refused(Till, "Till.total", "*args / **kwargs cannot cross the wire", "fix: name each parameter")


def test_a_parameter_without_a_hint() -> None:
    class Till(Service):
        async def total(self, amount) -> int: ...  # type: ignore[no-untyped-def]

    refused(Till, "Till.total", "parameter 'amount' has no type hint", "`amount: int`")


def test_a_principal_in_a_union_that_is_not_optional() -> None:
    class Till(Service):
        @get("/till")
        async def total(self, who: Principal | int) -> int: ...

    refused(Till, "Till.total", "parameter 'who' mixes Principal with other types",
            "annotate it `Principal` or `Principal | None`")


def test_a_path_parameter_bound_by_the_edge() -> None:
    class Till(Service):
        @get("/till/{key}")
        async def total(self, key: Annotated[str, Header("Idempotency-Key")]) -> int: ...

    refused(Till, "Till.total", "{key} in route /till/{key} names a parameter bound by the edge",
            "rename one of them")


def test_a_path_parameter_the_method_does_not_have() -> None:
    class Till(Service):
        @post("/till/{till_id}")
        async def total(self, qty: int) -> int: ...

    refused(Till, "Till.total", "route POST /till/{till_id} has {till_id}",
            "the method has no parameter 'till_id'", "add a parameter `till_id`")


def test_a_route_on_a_plain_def() -> None:
    class Till(Service):
        @get("/till")
        def total(self) -> int:
            return 1

    refused(Till, "Till.total", "plain `def`", "only `async def` methods are served")


class Drawer:  # neither a Struct, a dataclass nor a built-in type (module level: hints resolve)
    pass


def test_a_type_that_cannot_cross_the_wire() -> None:
    class Till(Service):
        async def total(self, drawer: Drawer) -> int: ...

    refused(Till, "Till.total", "parameter 'drawer'", "cannot cross the wire or be described in OpenAPI",
            "use a msgspec.Struct, a dataclass")
