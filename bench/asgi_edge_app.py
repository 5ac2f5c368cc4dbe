"""The tickets monolith served through the edge as an ASGI app (for uvicorn).

    PORT=9000 uvicorn asgi_edge_app:app --port 8080
"""

from pathlib import Path

from amoeba.runtime.asgi_edge import asgi_edge

app = asgi_edge(Path(__file__).resolve().parent.parent / "examples" / "tickets" / "topologies"
                / "monolith.yaml", "main")
