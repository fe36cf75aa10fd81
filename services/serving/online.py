"""Entity keys resolved through the features service's online store (``POST /v1/features/online``): the
entity's latest feature values, the same ones training saw offline."""

from __future__ import annotations

from typing import Any

import httpx

from driftloop.errors import OnlineStoreUnavailable

TIMEOUT_SECONDS = 5.0


class OnlineStoreClient:
    def __init__(self, features_url: str, headers: dict[str, str] | None = None) -> None:
        self.url = features_url.rstrip("/") + "/v1/features/online"
        self._client = httpx.Client(timeout=TIMEOUT_SECONDS, headers=headers or {})

    def lookup(self, stream: str, entities: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """``(values by entity, missing entities)``."""
        try:
            response = self._client.post(self.url, json={"stream": stream, "entities": entities})
        except httpx.HTTPError as exc:
            raise OnlineStoreUnavailable(f"online store at {self.url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise OnlineStoreUnavailable(
                f"online store at {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        body = response.json()
        return body["values"], list(body.get("missing", []))

    def close(self) -> None:
        self._client.close()
