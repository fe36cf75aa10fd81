"""The runtime every service process shares.

- ``service``: the process (logging, settings, HTTP app with ``/healthz`` and ``/metrics``, consumers, clean stop);
- ``bus``: Avro events on Kafka, recorded in the event log, handled once per consumer group;
- ``serde``: the Confluent wire format; ``metrics``: the shared Prometheus metrics;
- ``security``: the token check of every route; ``retention``: batched purges; ``timeline``: cascades from the log.

Import what you need from the submodule (``from driftloop.runtime.service import run``).
"""

__all__ = ["bus", "metrics", "retention", "security", "serde", "service", "timeline"]
