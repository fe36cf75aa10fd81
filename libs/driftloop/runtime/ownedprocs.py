"""Processes a service starts that can outlive it (a local Ray's GCS, raylet, agents and workers): their PIDs are
kept in ``<home>/state/procs-<owner>.json`` so that they are stopped with the service, at its next start after a
``kill -9``, and by ``driftloop down``. Only the recorded PIDs are ever signalled, and only while each is still the
same process (its start time, from ``/proc``, is recorded with it): a reused PID is left alone.

A process that leads its own session (as ``driftloop up`` starts each service) records that session too: a process
it started after its last record (a Ray worker launched while the service was being killed) is orphaned by the
kill, but keeps the session id, and the kernel does not reuse that id while any member lives. So the next start
stops the session's members as well, never its own session's.
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


def _stat_field(pid: int, index: int) -> int | None:
    """Field ``index + 3`` of ``/proc/<pid>/stat`` (0: state is skipped; 1: parent, 3: session)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[index])


def _parent(pid: int) -> int | None:
    return _stat_field(pid, 1)


def _own_session() -> int | None:
    """This process's session id when it leads that session (else the session is someone else's: a shell's)."""
    return os.getpid() if os.getsid(0) == os.getpid() else None


def session_members(session: int) -> list[int]:
    """The live processes of ``session``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _stat_field(int(entry), 3) == session and start_ticks(int(entry)) is not None:
            members.append(int(entry))
    return sorted(members)


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


def _read(path: Path) -> tuple[dict[int, int], int | None]:
    """The recorded processes (PID: start time) and the recorder's session (None: it led none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, None
    if "processes" not in data:  # written before sessions were recorded: PID -> start time only
        data = {"processes": data, "session": None}
    try:
        processes = {int(pid): int(ticks) for pid, ticks in data["processes"].items()}
        session = data["session"]
        return processes, int(session) if session is not None else None
    except (AttributeError, TypeError, ValueError):
        return {}, None


def record(home: Path, owner: str, pids: Iterable[int]) -> Path:
    """Add ``pids`` (with their start times) to the owner's file, with this process's session if it leads one;
    entries whose process is gone are dropped."""
    path = procs_file(home, owner)
    recorded, _ = _read(path)
    entries = {pid: ticks for pid, ticks in recorded.items() if start_ticks(pid) == ticks}
    for pid in pids:
        ticks = start_ticks(pid)
        if ticks is not None:
            entries[pid] = ticks
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    processes = {str(pid): ticks for pid, ticks in sorted(entries.items())}
    tmp.write_text(json.dumps({"processes": processes, "session": _own_session()}))
    tmp.replace(path)
    return path


def alive(home: Path, owner: str) -> list[int]:
    """The recorded processes of ``owner`` still running."""
    recorded, _ = _read(procs_file(home, owner))
    return [pid for pid, ticks in recorded.items() if start_ticks(pid) == ticks]


def stop_recorded(home: Path, owner: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM the owner's recorded processes still running, and the members of the recorder's session (unless
    it is this process's own), SIGKILL those left after ``timeout``, and forget them. Returns the PIDs that were
    signalled."""
    path = procs_file(home, owner)
    recorded, session = _read(path)
    entries = {pid: ticks for pid, ticks in recorded.items() if start_ticks(pid) == ticks}
    if session is not None and session != os.getsid(0):
        for pid in session_members(session):
            ticks = start_ticks(pid)
            if ticks is not None:
                entries.setdefault(pid, ticks)
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
