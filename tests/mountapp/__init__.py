"""A test app with mounted ASGI apps: a raw ASGI 3 callable and a FastAPI app."""
