"""The apps the services mount (tickets_api/services.py).

    amoeba run topologies/monolith.yaml      # or monolith-multi, microservices, hybrid
"""

from fastapi import FastAPI

from tickets_api.routers import ticket_router, vacancy_router


def create_app(mode: str) -> FastAPI:
    app = FastAPI(title=f"tickets-{mode}")
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


vacancy_app = create_app("vacancy")
ticket_app = create_app("ticket")
