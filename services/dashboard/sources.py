"""What the dashboard asks the other services over HTTP. A service that does not answer gives an ``Answer``
with its error, shown on the page, never an exception."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from driftloop.contracts.settings import Settings


@dataclass
class Answer:
    data: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Platform:
    """HTTP client of registry, training, monitor and serving."""

    def __init__(self, settings: Settings, headers: Callable[[], dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.headers = headers or (lambda: {})
        self.http = httpx.Client(timeout=5.0)

    def get(self, service: str, path: str, **params: Any) -> Answer:
        url = self.settings.services.url(service) + path
        try:
            response = self.http.get(url, params=params or None, headers=self.headers())
        except httpx.HTTPError as exc:
            return Answer(error=f"{service} unavailable ({type(exc).__name__})")
        if response.status_code != 200:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            return Answer(error=f"{service}: HTTP {response.status_code} {detail}")
        try:
            return Answer(data=response.json())
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
        self.http.close()
