"""The demo's manual retrain is asked again while the triggers still count v1's run (they learn its end from the
bus, possibly after serving switched); any other refusal stops the demo with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from driftloop.contracts.settings import Settings
from driftloop.errors import ConflictError
from driftloop.ops.demo import Demo, DemoScale

REPO = Path(__file__).resolve().parents[2]


class RefusingPlatform:
    def __init__(self, refusals: list[tuple[str, str]]) -> None:
        self.refusals = refusals
        self.asked = 0

    def retrain(self, model: str, *, reason: str = "manual") -> None:
        self.asked += 1
        if self.refusals:
            code, message = self.refusals.pop(0)
            raise ConflictError(message, code=code)

    def close(self) -> None:
        pass


def demo_with(platform: RefusingPlatform, tmp_path: Path) -> Demo:
    settings = Settings(home=tmp_path, pipelines_dir=REPO / "pipelines")
    demo = Demo(settings, Console(file=io.StringIO()), DemoScale(step_timeout=30))
    demo.platform = platform  # type: ignore[assignment]
    return demo


def test_a_retrain_refused_while_v1s_run_settles_is_asked_again(tmp_path: Path) -> None:
    platform = RefusingPlatform(
        [
            ("run_in_progress", "retrain of 'fraud' not requested: merged: training run r1 is active"),
            ("run_in_progress", "retrain of 'fraud' not requested: merged: run r1 awaits the gate"),
        ]
    )
    demo = demo_with(platform, tmp_path)
    assert demo.wait_for("the triggers to take a manual retrain", demo.ask_retrain) is True
    assert platform.asked == 3


def test_any_other_refusal_stops_the_demo_with_its_reason(tmp_path: Path) -> None:
    platform = RefusingPlatform(
        [("retrain_conflict", "no dataset version of stream 'transactions' is materialized yet")]
    )
    demo = demo_with(platform, tmp_path)
    with pytest.raises(ConflictError, match="no dataset version"):
        demo.wait_for("the triggers to take a manual retrain", demo.ask_retrain)
    assert platform.asked == 1
