"""The prequential replay, short, on the real stack (Tansu, our registry, SQLite, local objects, Spark, Ray or the
in-process fit): river's Agrawal stream changes its concept gradually (600 rows around row 3000); records go into
the stream, each row is predicted by serving and its label posted as feedback 100 rows later. The loop must detect
the change within a window, without a false alarm before it and without a retrain on identical data, and what it
serves after the change must beat the model that was never retrained. The long replays and their timings are
``bench/replay.py``'s (README, "Prequential replay")."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ROWS, CHANGE_AT, WIDTH, WINDOW = 4500, 3000, 600, 500


def replay_summary(output: str) -> dict[str, Any]:
    """The ``--json`` summary: the object printed after the replay's progress lines."""
    start = output.index("\n{") + 1
    summary, _ = json.JSONDecoder().raw_decode(output[start:])
    return summary


def test_a_short_replay_of_a_drifting_river_stream_adapts_without_false_alarms(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "replay.py"),
        "auto",
        "agrawal",
        "--rows",
        str(ROWS),
        "--change-at",
        str(CHANGE_AT),
        "--width",
        str(WIDTH),
        "--window",
        str(WINDOW),
        "--rows-per-second",
        "25",
        "--settle-seconds",
        "10",
        "--json",
    ]
    replay = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = replay.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        # SIGINT, not a kill: the replay's own `finally` stops its stack's processes by PID.
        replay.send_signal(signal.SIGINT)
        stdout, stderr = replay.communicate(timeout=120)
        pytest.fail("the replay did not end within 20 minutes: " + stdout[-3000:] + stderr[-3000:])
    done = subprocess.CompletedProcess(command, replay.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # A replay that ended well removes its folder (stack home, logs, database); `--keep` would keep it.
    home = re.search(r"stack home (\S+)", done.stdout)
    assert home is not None and Path(home.group(1)).parent.name.startswith("driftloop-replay-"), done.stdout[:2000]
    assert not Path(home.group(1)).parent.exists(), done.stderr[-2000:]
    summary = replay_summary(done.stdout)
    explained = json.dumps({k: v for k, v in summary.items() if k not in ("windows_after_change",)}, default=str)

    # Judgement: no alarm on the stable part, the change seen within one window (a gradual change may be seen
    # inside its transition, before its midpoint), nothing retrained on data a run already trained on.
    assert summary["false_alarms"] == 0, explained
    delay = summary["detection_delay_rows"]
    assert delay is not None and -WIDTH // 2 <= delay <= WINDOW, explained
    assert summary["retrains"] >= 2 and summary["retrains_on_identical_data"] == 0, explained
    # Adaptation: a model trained on post-change rows served during the replay, and what was served after the
    # change beats the first champion never retrained (AUC about 0.46 on the new concept) by far.
    rows_to_model = summary["rows_to_post_change_model"]
    assert rows_to_model is not None and rows_to_model < ROWS - CHANGE_AT, explained
    assert summary["served_auc_after_change"] >= summary["never_retrained_auc_after_change"] + 0.2, explained
