"""Settings (env, file, unknown keys) and the pipeline config (validation with line numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.contracts.pipeline import load_pipelines, parse_pipeline
from driftloop.contracts.settings import Settings, load_settings, settings_env
from driftloop.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.kafka.embedded and s.schema_registry.embedded
    assert s.database_url.startswith("sqlite:///") and s.object_store.type == "local"


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS", "kafka.internal:9093")
    monkeypatch.setenv("DRIFTLOOP_DATABASE__URL", "postgresql+psycopg://u@db:5432/driftloop")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "kafka.internal:9093"
    assert s.database_url == "postgresql+psycopg://u@db:5432/driftloop"


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVER", "x:1")
    with pytest.raises(ConfigError, match="DRIFTLOOP_KAFKA__BOOTSTRAP_SERVER"):
        load_settings()
    monkeypatch.delenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVER")
    monkeypatch.setenv("DRIFTLOOP_NOPE", "1")
    with pytest.raises(ConfigError, match="DRIFTLOOP_NOPE"):
        load_settings()


def test_config_file_is_read_and_unknown_keys_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "driftloop.toml"
    config.write_text('[object_store]\ntype = "s3"\nendpoint = "minio:9000"\n')
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(config))
    assert load_settings().object_store.endpoint == "minio:9000"
    config.write_text('[object_store]\ntype = "s3"\nendpont = "minio:9000"\n')
    with pytest.raises(ConfigError, match=r"object_store\.endpont"):
        load_settings()


def test_settings_env_reproduces_settings_in_a_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Settings(home=tmp_path / "h", kafka={"bootstrap_servers": "127.0.0.1:1234", "client_config": {"a": "b"}})
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    child = load_settings()
    assert child.kafka == original.kafka
    assert child.home == (tmp_path / "h").resolve()


def test_the_demo_pipeline_is_valid() -> None:
    pipelines = load_pipelines(REPO / "pipelines")
    cfg = pipelines["fraud-detector"]
    assert cfg.stream.name == "transactions"
    assert cfg.stream.avro_schema()["fields"][0] == {"name": "customer_id", "type": "string"}


BASE = """\
stream:
  name: s
  fields:
    - {name: id, type: string}
    - {name: t, type: timestamp}
    - {name: x, type: double}
    - {name: y, type: int}
  entity_key: id
  event_time: t
  label: y
features:
  - {name: x}
model:
  name: m
"""


def test_unknown_key_error_points_at_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_pipeline(BASE + "  famly: lightgbm\n", source="p.yaml")
    assert "p.yaml:15" in str(err.value) and "model.famly" in str(err.value) and "unknown key" in str(err.value)


def test_bad_references_are_explained() -> None:
    with pytest.raises(ConfigError, match="feature 'nope' reads field 'nope'"):
        parse_pipeline(BASE.replace("- {name: x}", "- {name: nope}"))
    with pytest.raises(ConfigError, match="label 'y' cannot also be a feature"):
        parse_pipeline(BASE.replace("- {name: x}", "- {name: y}"))
    with pytest.raises(ConfigError, match="quality rule on unknown field"):
        parse_pipeline(BASE + "quality:\n  - {rule: not_null, field: zzz}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:16"):
        parse_pipeline(BASE + "quality:\n  - {rule: range, field: x, min: low}\n", source="p.yaml")
