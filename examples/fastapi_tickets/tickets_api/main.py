"""One codebase, two shapes: SERVICE_MODE=monolith | vacancy | ticket.

    SERVICE_MODE=monolith uvicorn tickets_api.main:app --port 8000
    SERVICE_MODE=vacancy  uvicorn tickets_api.main:app --port 8001
    SERVICE_MODE=ticket VACANCY_URL=http://127.0.0.1:8001 uvicorn tickets_api.main:app --port 8002
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tickets_api.clients import LocalVacancyClient, RemoteVacancyClient
from tickets_api.routers import ticket_router, vacancy_router
from tickets_api.stock import Stock

MODE = os.environ.get("SERVICE_MODE", "monolith")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if MODE in ("monolith", "vacancy"):
        app.state.stock = Stock(int(os.environ.get("INITIAL_STOCK", "1000")))
    if MODE == "monolith":
        app.state.vacancy = LocalVacancyClient(app.state.stock)
    if MODE == "ticket":
        app.state.vacancy = RemoteVacancyClient(os.environ.get("VACANCY_URL", "http://127.0.0.1:8001"))
    yield
    if MODE == "ticket":
        await app.state.vacancy.aclose()


def create_app(mode: str) -> FastAPI:
    app = FastAPI(title=f"tickets-{mode}", lifespan=lifespan)
    if mode in ("monolith", "vacancy"):
        app.include_router(vacancy_router, prefix="/api/v1")
    if mode in ("monolith", "ticket"):
        app.include_router(ticket_router, prefix="/api/v1")

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "service": mode}

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"mode": "monolith" if mode == "monolith" else "microservices", "service": mode}

    return app


app = create_app(MODE)
