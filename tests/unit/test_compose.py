"""docker-compose.yml and the settings agree: every DRIFTLOOP_* key is a real setting, and compose parses. Compose
is secure by default (no start without an admin token), and Prometheus/Grafana are wired to the services."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftloop.contracts.settings import PrometheusSettings, Settings, _unknown_env_keys
from driftloop.errors import StackError
from driftloop.ops.stack import SERVICES

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
# What `make compose-env` would write to .env; the tests give it explicitly.
TEST_ADMIN_TOKEN = "compose-test-token-0123456789"
TEST_KAFKA_PASSWORD = "compose-test-kafka-password"
SECRETS = {"DRIFTLOOP_ADMIN_TOKEN": TEST_ADMIN_TOKEN, "DRIFTLOOP_KAFKA_PASSWORD": TEST_KAFKA_PASSWORD}
_REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:?message}``: the variable's value, or an error naming it (as compose refuses to start)."""

    def substitute(match: re.Match[str]) -> str:
        if not env.get(match.group(1)):
            raise KeyError(match.group(1))
        return env[match.group(1)]

    return _REQUIRED_VARIABLE.sub(substitute, value)


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose", "-f", str(COMPOSE)]
    assert shutil.which("docker"), "neither docker-compose nor docker is installed: run `make setup`"
    return ["docker", "compose", "-f", str(COMPOSE)]


def _compose_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return {**env, **variables}


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
        raw = {k: str(v) for k, v in services[name]["environment"].items()}
        env = {k: _interpolate(v, SECRETS) for k, v in raw.items()}
        assert _unknown_env_keys(env) == [], f"{name}: unknown settings in compose"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.kafka.embedded is False and settings.schema_registry.embedded is False
        # Secure by default: every service enforces the admin token it was given, which has no default.
        assert settings.security.enabled
        assert [t.get_secret_value() for t in settings.security.admin_tokens.values()] == [TEST_ADMIN_TOKEN]
        with pytest.raises(KeyError, match="DRIFTLOOP_ADMIN_TOKEN"):
            _interpolate(raw["DRIFTLOOP_SECURITY__ADMIN_TOKENS"], {})
        # Every Kafka client authenticates with SASL/SCRAM as the user kafka-users creates.
        assert settings.kafka_config()["sasl.password"] == TEST_KAFKA_PASSWORD
        assert settings.kafka_security_config() == {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "driftloop",
            "sasl.password": TEST_KAFKA_PASSWORD,
        }
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.object_store.type == "s3"
        if name in SERVICES:
            published = {int(p.split(":")[1]) for p in services[name]["ports"]}
            assert settings.services.port(name) in published, f"{name} publishes {published}"


def test_compose_file_parses_with_docker_compose(tmp_path: Path) -> None:
    # --project-directory: a developer's own .env in the checkout must not decide the outcome.
    cmd = [*_compose_cmd(), "--project-directory", str(tmp_path), "config", "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_compose_env(**SECRETS))
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_an_admin_token(tmp_path: Path) -> None:
    cmd = [*_compose_cmd(), "--project-directory", str(tmp_path), "config", "-q"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=_compose_env(DRIFTLOOP_KAFKA_PASSWORD=TEST_KAFKA_PASSWORD)
    )
    assert result.returncode != 0
    assert "set DRIFTLOOP_ADMIN_TOKEN" in result.stderr, result.stderr


def test_compose_refuses_to_start_without_a_kafka_password(tmp_path: Path) -> None:
    cmd = [*_compose_cmd(), "--project-directory", str(tmp_path), "config", "-q"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=_compose_env(DRIFTLOOP_ADMIN_TOKEN=TEST_ADMIN_TOKEN)
    )
    assert result.returncode != 0
    assert "set DRIFTLOOP_KAFKA_PASSWORD" in result.stderr, result.stderr


def test_kafka_accepts_clients_only_with_sasl_scram() -> None:
    services = _services()
    kafka = services["kafka"]["environment"]
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0]: item.split("://")[1] for item in kafka["KAFKA_LISTENERS"].split(",")}
    # The one listener other containers reach is SASL; the plaintext ones are on the container's loopback.
    assert protocols["CLIENT"] == "SASL_PLAINTEXT" and listeners["CLIENT"] == ":9092"
    assert all(listeners[name].startswith("127.0.0.1:") for name, p in protocols.items() if p == "PLAINTEXT")
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert "ports" not in services["kafka"]
    users = services["kafka-users"]
    assert users["network_mode"] == "service:kafka" and "SCRAM-SHA-512=[password=" in users["command"][0]
    registry = services["schema-registry"]["environment"]
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    for name in SERVICES:
        assert services[name]["depends_on"]["kafka-users"]["condition"] == "service_completed_successfully"


def test_what_has_no_authentication_is_published_on_loopback_only() -> None:
    services = _services()
    for name in ("schema-registry", "minio", "prometheus"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    grafana = services["grafana"]["environment"]
    assert "DRIFTLOOP_ADMIN_TOKEN:?" in grafana["GF_SECURITY_ADMIN_PASSWORD"]


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


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is missing: run `make setup`"
    result = subprocess.run(
        [promtool, "check", "config", str(REPO / "infra/prometheus/prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}


def test_prometheus_and_grafana_provisioning_point_at_each_other() -> None:
    services = _services()
    prometheus, grafana = services["prometheus"], services["grafana"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert _mounts(prometheus)[config_flag.split("=", 1)[1]] == "./infra/prometheus/prometheus.yml"

    grafana_mounts = _mounts(grafana)
    assert grafana_mounts["/etc/grafana/provisioning"] == "./infra/grafana/provisioning"
    datasource = yaml.safe_load((REPO / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    assert host == "prometheus" and "prometheus" in grafana["depends_on"]
    assert any(str(p).endswith(f":{port}") for p in prometheus["ports"]), f"prometheus does not listen on {port}"
    scrape_interval = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    assert datasource["datasources"][0]["jsonData"]["timeInterval"] == scrape_interval  # $__rate_interval needs it

    provider = yaml.safe_load((REPO / "infra/grafana/provisioning/dashboards/driftloop.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert grafana_mounts[dashboards_dir] == "./infra/grafana/dashboards"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (REPO / grafana_mounts[str(home.parent)] / home.name).is_file()


def test_prometheus_config_targets_where_the_settings_run_the_services(tmp_path: Path) -> None:
    from driftloop.ops.stack import prometheus_config

    settings = Settings(home=tmp_path, services={"host": "0.0.0.0", "serving_port": 9105, "monitor_port": 9106})
    config = prometheus_config(settings, ["serving", "monitor"], scrape_interval="2s")
    template = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())
    assert [(j["job_name"], j["metrics_path"]) for j in config["scrape_configs"]] == [
        (j["job_name"], j["metrics_path"]) for j in template["scrape_configs"]
    ]
    groups = config["scrape_configs"][0]["static_configs"]
    # A wildcard bind is scraped on loopback; services not started are not expected.
    assert groups == [
        {"targets": ["127.0.0.1:9105"], "labels": {"service": "serving"}},
        {"targets": ["127.0.0.1:9106"], "labels": {"service": "monitor"}},
    ]
    assert config["global"]["scrape_interval"] == "2s"
    with pytest.raises(StackError, match="servings"):
        prometheus_config(settings, ["servings"])


def test_up_with_prometheus_but_no_binary_fails_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.ops.stack import Stack

    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus here
    stack = Stack(Settings(home=tmp_path / "home", pipelines_dir=REPO / "pipelines"))
    with pytest.raises(StackError, match="make setup"):
        stack.up(prometheus=True)
    # The setting asks for it too.
    by_setting = Stack(stack.settings.model_copy(update={"prometheus": PrometheusSettings(enabled=True)}))
    with pytest.raises(StackError, match="make setup"):
        by_setting.up()
    assert stack.components() == [] and not (tmp_path / "home" / "driftloop.db").exists()


def _metric_names() -> set[str]:
    """Every sample name the platform's code can expose (generic + per-service metrics)."""
    import importlib

    from prometheus_client import REGISTRY

    for module in (
        "driftloop.runtime.metrics",
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
