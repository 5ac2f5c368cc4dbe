from amoeba import App
from mountapp.services import Front, Store

app = App("mountapp", services=[Store, Front])
