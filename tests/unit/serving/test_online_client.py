"""Serving's entity lookup in the features service's online store: values when it answers; when it does not
answer, or answers with an error, ``OnlineStoreUnavailable`` (which the predict route turns into a 503)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.services.serving.online import TIMEOUT_SECONDS, OnlineStoreClient, OnlineStoreUnavailable


def online_client(tmp_path: Path, handler: httpx.MockTransport | None = None) -> OnlineStoreClient:
    settings = Settings(home=tmp_path)
    if handler is None:
        return OnlineStoreClient(settings)
    client = ServiceClient("features", settings, timeout=TIMEOUT_SECONDS, retries=0, transport=handler)
    return OnlineStoreClient(settings, client=client)


def test_lookup_gives_values_and_missing_entities(tmp_path: Path) -> None:
    sent: list[bytes] = []

    def features(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, json={"values": {"c1": {"amount": 3.0}}, "missing": ["nobody"]})

    values, missing = online_client(tmp_path, httpx.MockTransport(features)).lookup("tx", ["c1", "nobody"])
    assert values == {"c1": {"amount": 3.0}} and missing == ["nobody"]
    assert b'"entities":["c1","nobody"]' in sent[0].replace(b" ", b"")


def test_an_error_answer_of_the_features_service_is_unavailable(tmp_path: Path) -> None:
    down = httpx.MockTransport(lambda _request: httpx.Response(503, json={"detail": "Redis does not answer"}))
    with pytest.raises(OnlineStoreUnavailable, match="Redis does not answer"):
        online_client(tmp_path, down).lookup("tx", ["c1"])


def test_a_features_service_that_is_not_there_is_unavailable_at_once(tmp_path: Path) -> None:
    calls: list[str] = []

    def refused(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(OnlineStoreUnavailable, match=r"/v1/features/online.*does not answer"):
        online_client(tmp_path, httpx.MockTransport(refused)).lookup("tx", ["c1"])
    assert calls == ["/v1/features/online"]  # not retried: the prediction answers 503 now


def test_the_lookup_waits_its_own_timeout(tmp_path: Path) -> None:
    client = online_client(tmp_path)
    assert client._client._http.timeout.read == TIMEOUT_SECONDS
    assert client.url == f"{Settings(home=tmp_path).services.url('features')}/v1/features/online"
    client.close()
