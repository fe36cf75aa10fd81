"""``driftloop pipeline apply | remove`` without a running stack: a file is checked and stored in pipelines_dir (as its
model's file), collisions and bad files are refused before anything is written, and a served model's file is not
removed unless forced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.contracts.pipeline import load_pipelines
from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError, ConflictError
from driftloop.ops.cli import app
from driftloop.ops.pipelines import apply_pipeline, remove_pipeline

REPO = Path(__file__).resolve().parents[2]
WEATHER = (REPO / "pipelines" / "transactions.yaml").read_text()


def weather(text: str = WEATHER) -> str:
    return text.replace("name: transactions", "name: weather").replace("name: fraud-detector", "name: rain-model")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(REPO / "pipelines" / "transactions.yaml", pipelines / "transactions.yaml")
    return Settings(home=tmp_path / "home", pipelines_dir=pipelines)


def test_a_new_pipeline_is_stored_as_its_model_file_and_a_change_replaces_it(
    settings: Settings, tmp_path: Path
) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(weather())
    applied = apply_pipeline(settings, draft, bus=False)
    assert (applied.change, applied.path) == ("created", settings.pipelines_dir / "rain-model.yaml")
    assert set(load_pipelines(settings.pipelines_dir)) == {"fraud-detector", "rain-model"}
    assert apply_pipeline(settings, draft, bus=False).change == "unchanged"
    draft.write_text(weather().replace("max_future_seconds: 3600", "max_future_seconds: 60"))
    assert apply_pipeline(settings, draft, bus=False).change == "changed"
    assert load_pipelines(settings.pipelines_dir)["rain-model"].stream.max_future_seconds == 60


def test_collisions_and_bad_files_are_refused_before_anything_is_written(settings: Settings, tmp_path: Path) -> None:
    same_stream = tmp_path / "same-stream.yaml"
    same_stream.write_text(WEATHER.replace("name: fraud-detector", "name: other-model"))
    with pytest.raises(ConflictError, match="already the stream of model 'fraud-detector'"):
        apply_pipeline(settings, same_stream, bus=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text(weather().replace("name: hour", "name: hour of day"))
    with pytest.raises(ConfigError, match="not an Avro name"):
        apply_pipeline(settings, bad, bus=False)
    assert set(load_pipelines(settings.pipelines_dir)) == {"fraud-detector"}


def test_a_served_model_is_not_removed_unless_forced(settings: Settings, tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(weather())
    apply_pipeline(settings, draft, bus=False)
    with pytest.raises(ConflictError, match="is served"):
        remove_pipeline(settings, "rain-model", served_version=2, force=False, bus=False)
    assert remove_pipeline(settings, "rain-model", served_version=2, force=True, bus=False).name == "rain-model.yaml"
    with pytest.raises(ConfigError, match="last pipeline"):
        remove_pipeline(settings, "fraud-detector", served_version=None, force=False, bus=False)


def test_the_cli_applies_without_a_running_stack(settings: Settings, tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(weather())
    env = {"DRIFTLOOP_HOME": str(settings.home), "DRIFTLOOP_PIPELINES_DIR": str(settings.pipelines_dir)}
    result = CliRunner().invoke(app, ["pipeline", "apply", str(draft)], env=env)
    assert result.exit_code == 0, result.output
    assert "created" in result.output and "the stack is not running" in result.output
    assert (settings.pipelines_dir / "rain-model.yaml").read_text() == weather()
