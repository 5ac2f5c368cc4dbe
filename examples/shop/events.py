"""The events the shop's services exchange.  Their names are the contract."""

from amoeba.events import Event


class UserRegistered(Event):
    event_name = "shop.user_registered"
    user_id: str
    email: str


class OrderPlaced(Event):
    event_name = "shop.order_placed"
    order_id: int
    user_id: str
    total_amount: str  # decimal text, as the API shows it
    items: int
    hold: str | None = None  # the catalog hold the order's stock came from: confirms it
