"""Entity keys resolved through the features service's online store (``POST /v1/features/online``): the
entity's latest feature values, the same ones training saw offline."""

from __future__ import annotations

from typing import Any

from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, OnlineStoreUnavailable

# A lookup is on the path of a prediction: a features service that does not answer in this time is down (a 503).
TIMEOUT_SECONDS = 5.0
LOOKUP_PATH = "/v1/features/online"


class OnlineStoreClient:
    def __init__(self, settings: Settings, *, client: ServiceClient | None = None) -> None:
        # No retries: a prediction waiting for a features service that is down should fail fast with a 503.
        self._client = client or ServiceClient("features", settings, timeout=TIMEOUT_SECONDS, retries=0)
        self.url = self._client.base_url + LOOKUP_PATH

    def lookup(self, stream: str, entities: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """``(values by entity, missing entities)``; ``OnlineStoreUnavailable`` when the features service does not
        answer or answers with an error."""
        try:
            body = self._client.post(LOOKUP_PATH, json={"stream": stream, "entities": entities})
        except (DriftloopError, ValueError) as exc:  # no answer, an error answer, or not JSON
            raise OnlineStoreUnavailable(f"online store at {self.url}: {exc}") from None
        return body["values"], list(body.get("missing", []))

    def close(self) -> None:
        self._client.close()
