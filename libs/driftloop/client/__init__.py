"""``driftloop.client``: talk to a driftloop platform from Python.

>>> from driftloop.client import Client
>>> with Client() as dl:                                     # the settings' URLs and token (driftloop up's)
...     dl.ingest("transactions", [{"customer_id": "c1", "event_time": "2026-12-03T10:00:00Z", "amount": 12.5}])
...     dl.predict("fraud-detector", [{"customer_id": "c1", "amount": 12.5, ...}])["predictions"]

One class, :class:`Client`; every method is one call to one service and returns the service's JSON answer (a dict).
Auth (a bearer token), timeouts, retries of connection failures (idempotent calls only) and the mapping of error
answers all live in :class:`driftloop.clients.http.ServiceClient`: an error answer raises from the one exception tree,
``driftloop.errors`` (``NotFoundError`` for a 404, ``ConflictError`` for a 409, ``ValidationFailed`` for a 422, ...;
every one a ``DriftloopError`` with ``status_code`` and ``code``); a service that does not answer raises
``ServiceError`` with code ``unreachable`` or ``timeout``.
"""

from driftloop.client.client import Client

__all__ = ["Client"]
