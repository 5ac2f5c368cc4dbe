"""The tickets app: which services exist.  Topologies say where they run."""

from amoeba import App
from tickets.ticket import Ticket
from tickets.vacancy import Vacancy

app = App(
    "tickets",
    services=[Vacancy, Ticket],
    title="Ticket sale",
    live_paths=["/api/v1/health"],
    ready_paths=["/api/v1/ready"],
)
