"""Pure parts of the ingestion operations: idempotent request ids, replay object names, profile diffs, and the
pipeline check of ``dataset.unique_by``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ConfigError
from driftloop.runtime.pipelines import PipelineCatalog
from driftloop.services.ingestion.deadletters import replay_key
from driftloop.services.ingestion.handlers import idempotent_request_id
from driftloop.services.ingestion.service import check_pipelines
from driftloop.services.ingestion.versioning import _profile_changes

PIPELINE = {
    "stream": {
        "name": "pay",
        "fields": [
            {"name": "customer_id", "type": "string"},
            {"name": "event_time", "type": "timestamp"},
            {"name": "amount", "type": "double"},
            {"name": "is_fraud", "type": "int"},
        ],
        "entity_key": "customer_id",
        "event_time": "event_time",
        "label": "is_fraud",
    },
    "features": [{"name": "amount"}],
    "model": {"name": "pay-model"},
}


def test_idempotent_request_id_depends_on_stream_and_key_only() -> None:
    assert idempotent_request_id("pay", "k1") == idempotent_request_id("pay", "k1")
    assert idempotent_request_id("pay", "k1") != idempotent_request_id("pay", "k2")
    assert idempotent_request_id("pay", "k1") != idempotent_request_id("other", "k1")
    assert idempotent_request_id("pay", "k1").startswith("idem-")


def test_replay_key_ignores_the_order_of_ids() -> None:
    assert replay_key("pay", [3, 1, 2]) == replay_key("pay", [1, 2, 3])
    assert replay_key("pay", [1, 2]) != replay_key("pay", [1, 2, 3])
    assert replay_key("pay", [1]).startswith("landed/pay/replay-")


def test_profile_changes_report_only_what_moved() -> None:
    old = {"amount": {"count": 10, "mean": 2.0, "nulls": 0}, "gone": {"count": 1}}
    new = {"amount": {"count": 15, "mean": 2.0, "nulls": 1}, "added": {"count": 3}}
    changes = _profile_changes(old, new)
    assert changes["amount"] == {"count": {"from": 10, "to": 15, "delta": 5}, "nulls": {"from": 0, "to": 1, "delta": 1}}
    assert changes["gone"]["column"] == "removed" and changes["added"]["column"] == "added"
    assert _profile_changes(old, old) == {}


def test_unique_by_must_name_stream_fields() -> None:
    good = PipelineConfig.model_validate({**PIPELINE, "dataset": {"unique_by": ["customer_id", "event_time"]}})
    catalog = PipelineCatalog({"pay-model": good})
    check_pipelines(SimpleNamespace(pipelines=catalog))  # type: ignore[arg-type]
    bad = PipelineConfig.model_validate({**PIPELINE, "dataset": {"unique_by": ["customer", "event_time"]}})
    with pytest.raises(ConfigError, match="unique_by names unknown field"):
        check_pipelines(SimpleNamespace(pipelines=PipelineCatalog({"pay-model": bad})))  # type: ignore[arg-type]
    # Applied live, a pipeline failing the check is not taken.
    with pytest.raises(ConfigError, match="unique_by names unknown field"):
        catalog.put(bad)
    assert catalog["pay-model"] == good
