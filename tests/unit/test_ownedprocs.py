"""Recorded processes (a service's Ray daemons): stopped by PID, and only while each is still the same process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from driftloop.runtime import ownedprocs


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_recorded_processes_and_their_children_are_stopped(tmp_path: Path) -> None:
    # A parent with a child of its own, as raylet and its agents.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); time.sleep(120)",
        ]
    )
    try:
        tree: list[int] = []
        for _ in range(100):
            tree = ownedprocs.descendants([parent.pid])
            if len(tree) == 2:
                break
            time.sleep(0.05)
        assert len(tree) == 2 and parent.pid in tree
        ownedprocs.record(tmp_path, "svc", tree)
        assert sorted(ownedprocs.alive(tmp_path, "svc")) == tree
        assert ownedprocs.stop_recorded(tmp_path, "svc", timeout=5) == tree
        parent.wait(timeout=5)
        assert ownedprocs.alive(tmp_path, "svc") == [] and all(ownedprocs.start_ticks(p) is None for p in tree)
        assert not ownedprocs.procs_file(tmp_path, "svc").exists()
    finally:
        parent.kill()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    other = sleeper()
    try:
        path = ownedprocs.procs_file(tmp_path, "svc")
        path.parent.mkdir(parents=True)
        # The PID as recorded by an older process of the same number (another start time).
        ticks = ownedprocs.start_ticks(other.pid)
        assert ticks is not None
        path.write_text(json.dumps({str(other.pid): ticks - 1}))
        assert ownedprocs.stop_recorded(tmp_path, "svc", timeout=1) == []
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()


def test_down_stops_what_every_owner_recorded(tmp_path: Path) -> None:
    first, second = sleeper(), sleeper()
    try:
        ownedprocs.record(tmp_path, "training-ray", [first.pid])
        ownedprocs.record(tmp_path, "other", [second.pid])
        assert ownedprocs.stop_all_recorded(tmp_path, timeout=5) == {"other": [second.pid], "training-ray": [first.pid]}
        assert first.wait(timeout=5) is not None and second.wait(timeout=5) is not None
        assert ownedprocs.stop_all_recorded(tmp_path) == {}
    finally:
        first.kill()
        second.kill()


def test_a_process_started_after_the_last_record_is_stopped_through_the_killed_leaders_session(
    tmp_path: Path,
) -> None:
    # A service leading its own session records what it started, then starts one more process (as raylet launches
    # a worker) and is killed before it records it: the orphan keeps the session, and the next start stops it.
    leader_code = (
        "import subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from driftloop.runtime import ownedprocs\n"
        "ownedprocs.record(Path(sys.argv[1]), 'svc', [])\n"
        "late = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(late.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", leader_code, str(tmp_path)], stdout=subprocess.PIPE, start_new_session=True
    )
    late = 0
    try:
        assert leader.stdout is not None
        late = int(leader.stdout.readline())
        leader.kill()
        leader.wait(timeout=5)
        assert ownedprocs.start_ticks(late) is not None  # orphaned, still running
        assert ownedprocs.alive(tmp_path, "svc") == []  # never recorded by PID
        assert ownedprocs.stop_recorded(tmp_path, "svc", timeout=5) == [late]
        assert ownedprocs.start_ticks(late) is None
    finally:
        leader.kill()
        if late and ownedprocs.start_ticks(late) is not None:
            os.kill(late, signal.SIGKILL)


def test_a_recorder_that_does_not_lead_its_session_records_none_and_its_own_session_is_never_stopped(
    tmp_path: Path,
) -> None:
    other = sleeper()  # same session as this test process
    try:
        ownedprocs.record(tmp_path, "svc", [])
        data = json.loads(ownedprocs.procs_file(tmp_path, "svc").read_text())
        assert data["session"] in (None, os.getsid(0))
        assert ownedprocs.stop_recorded(tmp_path, "svc", timeout=1) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
