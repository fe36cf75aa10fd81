"""``driftloop runs compare/rerun`` and ``driftloop models export``: the CLI's own logic, with the services' HTTP
answers given (the routes themselves are tested against the real service in tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from families_support import fit, pipeline_of
from fit_support import REPO
from typer.testing import CliRunner

from driftloop.client import Client
from driftloop.clients.objectstore import LocalObjectStore, sha256_bytes
from driftloop.contracts.settings import Settings
from driftloop.ops import cli
from driftloop.ops.cli import _common

RUNS: dict[str, dict[str, Any]] = {
    "run-a": {
        "run_id": "run-a",
        "request_id": "req-a",
        "model": "m",
        "state": "completed",
        "trigger": "manual",
        "created_at": "2026-12-03T10:00:00+00:00",
        "dataset_version_id": "tx@v1",
        "code_version": "abc",
        "params": {"num_leaves": 15, "learning_rate": 0.08},
        "metrics": {"roc_auc": 0.81},
        "search": {"best_validation_score": 0.8},
        "resources": {"wall_seconds": 3.5},
    },
    "run-b": {
        "run_id": "run-b",
        "request_id": "req-b",
        "model": "m",
        "state": "completed",
        "trigger": "manual",
        "created_at": "2026-12-03T10:00:00+00:00",
        "dataset_version_id": "tx@v2",
        "code_version": "abc",
        "params": {"num_leaves": 31, "learning_rate": 0.08},
        "metrics": {"roc_auc": 0.84},
        "search": None,
        "resources": {"wall_seconds": 4.0},
    },
}


def answers(routes: dict[tuple[str, str], Any]) -> Any:
    """A ``_common.client`` whose services answer ``routes`` ((method, path) -> JSON) over a mock transport."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=routes[(request.method, request.url.path)])

    urls = {name: f"http://{name}" for name in ("training", "registry")}
    return lambda: Client(urls=urls, token="t", transport=httpx.MockTransport(handle))


def test_compare_shows_params_and_metrics_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {("GET", f"/v1/runs/{run_id}"): run for run_id, run in RUNS.items()}
    monkeypatch.setattr(_common, "client", answers(routes))
    result = CliRunner().invoke(cli.app, ["runs", "compare", "run-a", "run-b"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 3}
    assert "15" in rows["param.num_leaves"] and "31" in rows["param.num_leaves"]
    assert "0.81" in rows["metric.roc_auc"] and "0.84" in rows["metric.roc_auc"]
    assert "tx@v1" in rows["dataset"] and "0.8" in rows["search.best_validation"]


def test_rerun_waits_and_reports_the_metric_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    rerun = {**RUNS["run-a"], "run_id": "run-r", "request_id": "rerun-1", "metrics": {"roc_auc": 0.81}}
    routes = {
        ("POST", "/v1/runs/run-a/rerun"): {"request_id": "rerun-1", "rerun_of": "run-a", "model": "m"},
        ("GET", "/v1/runs"): {"runs": [rerun]},
        ("GET", "/v1/runs/run-a"): RUNS["run-a"],
    }
    monkeypatch.setattr(_common, "client", answers(routes))
    result = CliRunner().invoke(cli.app, ["runs", "rerun", "run-a"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rerun"] == "run-r" and report["max_abs_difference"] == 0.0


def test_models_export_reads_the_artifact_from_the_store_and_checks_its_sha256(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, _, _ = fit(tmp_path / "fit", pipeline_of("lightgbm", "classification"))
    # The export computes the features from the model's pipeline file (the repo's fraud-detector).
    settings = Settings(home=tmp_path / "home", pipelines_dir=REPO / "pipelines")
    store = LocalObjectStore(settings.home / "objects")
    uri = store.put_bytes("models/m/runs/run-a/model.zip", result.artifact)
    version = {
        "model": "fraud-detector",
        "version": 3,
        "status": "promoted",
        "artifact_uri": uri,
        "artifact_sha256": sha256_bytes(result.artifact),
    }
    monkeypatch.setattr(_common, "settings", lambda: settings)
    monkeypatch.setattr(_common, "client", answers({("GET", "/v1/models/fraud-detector/versions/3"): version}))
    answer = CliRunner().invoke(cli.app, ["models", "export", "fraud-detector", "3", str(tmp_path / "out")])
    assert answer.exit_code == 0, answer.output
    signature = json.loads((tmp_path / "out" / "signature.json").read_text())
    assert signature["artifact_sha256"] == version["artifact_sha256"] and (tmp_path / "out" / "predict.py").exists()

    # A tampered artifact in the store is refused: nothing is exported.
    store.put_bytes("models/m/runs/run-a/model.zip", result.artifact + b"tampered")
    refused = CliRunner().invoke(cli.app, ["models", "export", "fraud-detector", "3", str(tmp_path / "out2")])
    assert refused.exit_code != 0 and not (tmp_path / "out2").exists()
