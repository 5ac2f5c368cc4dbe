"""The services; topologies/ say where each runs."""

from amoeba import App, Mount, Service
from tickets_api.clients import Vacancy, VacancyClient


class Ticket(Service):
    vacancy: VacancyClient
    mounts = (Mount("tickets_api.main:ticket_app", "/api/v1/purchase"),)


app = App("tickets", services=[Vacancy, Ticket], live_paths=["/api/v1/health"])
