"""What the dashboard asks the other services over HTTP. A service that does not answer gives an ``Answer``
with its error, shown on the page, never an exception."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from driftloop.clients.credentials import client_token
from driftloop.clients.http import NO_ANSWER, ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError

# The services the dashboard asks, and how long a page waits for each answer.
SERVICES = ("registry", "training", "monitor", "serving")
TIMEOUT_SECONDS = 5.0


@dataclass
class Answer:
    data: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Platform:
    """HTTP client of registry, training, monitor and serving. The token is read per request (``driftloop up``
    may write it after the dashboard starts); no retries: a page says "unavailable" at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        token = partial(client_token, settings)
        self.clients = {
            name: ServiceClient(name, settings, token=token, timeout=TIMEOUT_SECONDS, retries=0) for name in SERVICES
        }

    def get(self, service: str, path: str, **params: Any) -> Answer:
        try:
            return Answer(data=self.clients[service].get(path, params=params or None))
        except DriftloopError as exc:
            if exc.code in NO_ANSWER:
                return Answer(error=f"{service} unavailable ({exc.code})")
            return Answer(error=str(exc))  # "<service> answered <status>: <detail>"
        except ValueError:
            return Answer(error=f"{service}: answer is not JSON")

    def models(self) -> Answer:
        return self.get("registry", "/v1/models")

    def versions(self, model: str) -> Answer:
        return self.get("registry", f"/v1/models/{model}/versions")

    def runs(self, model: str, limit: int = 50) -> Answer:
        return self.get("training", "/v1/runs", model=model, limit=limit)

    def drift(self, model: str, limit: int = 200) -> Answer:
        return self.get("monitor", f"/v1/monitor/{model}/drift", limit=limit)

    def performance(self, model: str) -> Answer:
        return self.get("monitor", f"/v1/monitor/{model}/performance")

    def served(self, model: str) -> Answer:
        return self.get("serving", f"/v1/models/{model}")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
