"""docker-compose.yml and the settings agree: every DRIFTLOOP_* key is a real setting, and compose parses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftloop.settings import Settings, _unknown_env_keys
from driftloop.stack import SERVICES

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_driftloop_service_is_in_compose_and_built_from_infra() -> None:
    services = _services()
    for name in SERVICES:
        assert name in services, f"{name} is missing from docker-compose.yml"
        assert services[name]["command"] == ["python", "-m", f"driftloop.services.{name}"]
    build = services["migrate"]["build"]
    assert (REPO / build["dockerfile"]).is_file() and build["dockerfile"].startswith("infra/")
    for infra in ("kafka", "schema-registry", "postgres", "minio"):
        assert infra in services


def test_compose_settings_are_known_and_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    services = _services()
    monkeypatch.chdir(tmp_path)
    for name in (*SERVICES, "migrate"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert _unknown_env_keys(env) == [], f"{name}: unknown settings in compose"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.kafka.embedded is False and settings.schema_registry.embedded is False
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.object_store.type == "s3"
        if name in SERVICES:
            published = {int(p.split(":")[1]) for p in services[name]["ports"]}
            assert settings.services.port(name) in published, f"{name} publishes {published}"


def test_compose_file_parses_with_docker_compose() -> None:
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "-q"]
    else:
        assert shutil.which("docker"), "neither docker-compose nor docker is installed: run `make setup`"
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_service_on_its_compose_port() -> None:
    services = _services()
    assert "prometheus" in services and "grafana" in services
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    config = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    for name in SERVICES:
        port = int(services[name]["ports"][0].split(":")[1])
        assert f"{name}:{port}" in targets, f"prometheus does not scrape {name}"


def _metric_names() -> set[str]:
    """Every sample name the platform's code can expose (generic + per-service metrics)."""
    import importlib

    from prometheus_client import REGISTRY

    for module in (
        "driftloop.metrics",
        "driftloop.services.serving.predict",
        "driftloop.services.serving.loader",
        "driftloop.services.serving.rollout",
        "driftloop.services.monitor.metrics",
        "driftloop.services.registry.handlers",
    ):
        importlib.import_module(module)
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created")
    return {family.name + s for family in REGISTRY.collect() for s in suffixes}


def test_grafana_dashboard_queries_only_metrics_the_services_expose() -> None:
    import json
    import re

    provisioning = yaml.safe_load((REPO / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioning["datasources"][0]["uid"]
    dashboard = json.loads((REPO / "infra/grafana/dashboards/driftloop.json").read_text())
    known = _metric_names()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"driftloop_[a-z_]+", target["expr"]))
            assert names, f"{panel['title']}: no driftloop metric"
            assert names <= known, f"{panel['title']}: unknown metrics {names - known}"
            used |= names
    # The list: throughput, latency, consumer lag, drift scores, served version, cascade counts.
    for needed in (
        "driftloop_http_requests_total",
        "driftloop_http_request_seconds_bucket",
        "driftloop_consumer_lag",
        "driftloop_monitor_drift_statistic",
        "driftloop_serving_version",
        "driftloop_cascades_started_total",
    ):
        assert needed in used, needed
