"""Warm-ups at service start: the model-libraries loop imports each pipeline's family and runs the service's own
part, stops early when asked, and logs a failure instead of raising; the fit worker's warm-up loads its libraries."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
from model_factory import make_pipeline

from driftloop.contracts.artifact import ArtifactError, import_family
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.runtime import warmup


@pytest.fixture
def imported(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    families: list[str] = []
    monkeypatch.setattr(warmup, "import_family", families.append)
    return families


def test_each_pipeline_s_family_is_imported_and_the_service_part_run(imported: list[str]) -> None:
    pipelines = {"a": make_pipeline("a", "sa"), "b": make_pipeline("b", "sb")}
    seen: list[str] = []
    warmup.warm_models_loop("svc", pipelines, also=lambda p: seen.append(p.model.name))(threading.Event())
    assert imported == ["lightgbm", "lightgbm"]
    assert seen == ["a", "b"]


def test_a_stopping_service_warms_nothing(imported: list[str]) -> None:
    stop = threading.Event()
    stop.set()
    warmup.warm_models_loop("svc", {"a": make_pipeline("a", "sa")})(stop)
    assert imported == []


def test_a_failing_warm_up_is_logged_not_raised(imported: list[str], caplog: pytest.LogCaptureFixture) -> None:
    def broken(_pipeline: PipelineConfig) -> None:
        raise RuntimeError("no metric library")

    with caplog.at_level(logging.ERROR, logger=warmup.__name__):
        warmup.warm_models_loop("svc", {"a": make_pipeline("a", "sa")}, also=broken)(threading.Event())
    assert "svc: warming the model libraries up failed" in caplog.text


def test_an_unknown_family_is_refused() -> None:
    with pytest.raises(ArtifactError, match="unsupported model family"):
        import_family("catboost")


def test_the_fit_worker_warm_up_loads_what_a_fit_imports() -> None:
    # A fresh interpreter: this one may have imported them already.
    code = (
        "import sys\n"
        "from driftloop.services.training.fit import warm_fit_worker\n"
        "before = {m for m in ('lightgbm', 'sklearn.metrics', 'matplotlib.pyplot') if m in sys.modules}\n"
        "warm_fit_worker([('lightgbm', 'classification'), ('lightgbm', 'regression')])\n"
        "print(sorted(before), 'lightgbm' in sys.modules, 'sklearn.metrics' in sys.modules,"
        " 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True", "True", "True"]
