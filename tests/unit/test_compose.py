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
