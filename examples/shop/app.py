"""The shop app: which services exist.  Topologies say where they run."""

from amoeba import App
from shop.accounts import Accounts
from shop.catalog import Catalog
from shop.gateway import Gateway
from shop.notifications import Notifications
from shop.orders import Orders

app = App(
    "shop",
    services=[Gateway, Accounts, Catalog, Orders, Notifications],
    title="amoeba shop",
)
