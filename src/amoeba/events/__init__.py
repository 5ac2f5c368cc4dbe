"""Events between services: typed records, an outbox, at-least-once consumers.

    event.py     Event, on_event (pure declarations)
    bus.py       EventBus: the small interface a broker backend implements
    memory.py    MemoryBus: in-process queues (the default)
    nats.py      NatsBus: NATS JetStream
    redis.py     RedisBus: Redis Streams
    kafka.py     KafkaBus: Kafka (aiokafka), a retry topic per consuming service
    outbox.py    the outbox, inbox and dead-letter tables of a service's Database
    runtime.py   Events: publishing, the outbox relay, consumers with retries,
                 deduplication and dead letters; the counters metrics read
"""

from amoeba.events.event import Event, on_event

__all__ = ["Event", "on_event"]
