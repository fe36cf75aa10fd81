"""Processes a service starts that can outlive it (a local Ray's GCS, raylet, agents and workers): their PIDs are
kept in ``<home>/state/procs-<owner>.json`` so that they are stopped with the service, at its next start after a
``kill -9``, and by ``driftloop down``. Only the recorded PIDs are ever signalled, and only while each is still the
same process (its start time, from ``/proc``, is recorded with it): a reused PID is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def procs_file(home: Path, owner: str) -> Path:
    return Path(home) / "state" / f"procs-{owner}.json"


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if it does not exist (or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields 3 (state) and 22; the command (field 2) may hold spaces and parentheses: split after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [pid for pid in roots if start_ticks(pid) is not None]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def _read(path: Path) -> dict[int, int]:
    try:
        return {int(pid): int(ticks) for pid, ticks in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def record(home: Path, owner: str, pids: Iterable[int]) -> Path:
    """Add ``pids`` (with their start times) to the owner's file; entries whose process is gone are dropped."""
    path = procs_file(home, owner)
    entries = {pid: ticks for pid, ticks in _read(path).items() if start_ticks(pid) == ticks}
    for pid in pids:
        ticks = start_ticks(pid)
        if ticks is not None:
            entries[pid] = ticks
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(pid): ticks for pid, ticks in sorted(entries.items())}))
    tmp.replace(path)
    return path


def alive(home: Path, owner: str) -> list[int]:
    """The recorded processes of ``owner`` still running."""
    return [pid for pid, ticks in _read(procs_file(home, owner)).items() if start_ticks(pid) == ticks]


def stop_recorded(home: Path, owner: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM the owner's recorded processes still running, SIGKILL those left after ``timeout``, and forget
    them. Returns the PIDs that were signalled."""
    path = procs_file(home, owner)
    entries = {pid: ticks for pid, ticks in _read(path).items() if start_ticks(pid) == ticks}
    for pid in entries:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(start_ticks(p) == t for p, t in entries.items()):
        time.sleep(0.1)
    for pid, ticks in entries.items():
        if start_ticks(pid) == ticks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if entries:
        log.info("stopped %d process(es) recorded for %s: %s", len(entries), owner, sorted(entries))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return sorted(entries)


def stop_all_recorded(home: Path, timeout: float = 5.0) -> dict[str, list[int]]:
    """``stop_recorded`` for every owner with a file under ``<home>/state`` (``driftloop down``: what a service
    killed before it could stop its processes left behind)."""
    stopped = {}
    for path in sorted((Path(home) / "state").glob("procs-*.json")):
        owner = path.stem.removeprefix("procs-")
        pids = stop_recorded(home, owner, timeout)
        if pids:
            stopped[owner] = pids
    return stopped
