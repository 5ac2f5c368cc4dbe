"""What happened, in order, in this process (lifespan and service hooks)."""

EVENTS: list[str] = []


def record(what: str) -> None:
    EVENTS.append(what)
