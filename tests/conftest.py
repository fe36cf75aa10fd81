"""Shared fixtures: the real components, started by the tests and stopped by PID.

- ``broker``: the embedded Tansu broker (session scope), ``broker.bootstrap_servers``.
- ``schema_registry_url``: driftloop's schema registry service as a subprocess (session scope, SQLite).
- ``postgres_url``: a PostgreSQL server from the image's binaries, run as user postgres (session scope).
- ``s3_endpoint``: a moto S3 server (session scope), credentials ``testing``/``testing``.
- ``redis_server``: a Redis server (session scope, no persistence), ``redis://127.0.0.1:<port>/0``.
- ``make_settings(**overrides)``: Settings wired to the broker and registry, with a fresh home per test.

Under ``-n 2 --dist loadfile`` (``make test``) the end-to-end files run one after the other on one worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, http_ready, port_open, spawn, stop_pid, wait_until

REPO = Path(__file__).resolve().parents[1]
PIPELINES_DIR = REPO / "pipelines"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile``, the end-to-end files form one unit: each starts a whole stack (broker, ten
    services, Spark, Ray), and two at once on a 2-core machine starve each other's consumers (a CI failure)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EndToEndTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "tests/e2e" if scope.startswith("tests/e2e/") else scope

    return EndToEndTogether(config, log)


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="driftloop-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(session_dir: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(port=free_port(), log_path=session_dir / "logs" / "tansu.log")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def schema_registry_url(session_dir: Path) -> Iterator[str]:
    port = free_port()
    home = session_dir / "registry-home"
    settings = Settings(home=home, pipelines_dir=PIPELINES_DIR)
    env = settings_env(settings)
    env["DRIFTLOOP_SERVICES__SCHEMAREGISTRY_PORT"] = str(port)
    proc = spawn(
        [sys.executable, "-m", "driftloop.services.schemaregistry"], session_dir / "logs" / "schemaregistry.out", env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 60, "the schema registry")
    except Exception:
        stop_pid(proc.pid)
        raise
    yield url
    stop_pid(proc.pid)


@pytest.fixture
def make_settings(tmp_path: Path, broker: EmbeddedBroker, schema_registry_url: str) -> Callable[..., Settings]:
    """Settings for one test: its own home (SQLite db, local object store, logs), the shared broker and
    registry. Keyword overrides replace top-level settings (e.g. ``database={"url": ...}``)."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "home": tmp_path / "home",
            "pipelines_dir": PIPELINES_DIR,
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
            "schema_registry": {"url": schema_registry_url},
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and model names, so tests sharing the broker never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def postgres_url(session_dir: Path) -> Iterator[str]:
    if shutil.which("initdb") is None and not Path("/usr/lib/postgresql").exists():
        pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are not installed: run `make setup`")
    bindir = _pg_bindir()
    data = session_dir / "pgdata"
    sock = session_dir / "pgsock"
    for d in (data, sock):
        d.mkdir(parents=True, exist_ok=True)
    shutil.chown(session_dir, user="postgres")
    for d in (data, sock):
        shutil.chown(d, user="postgres")
        d.chmod(0o700)
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            *run_as,
            f"{bindir}/initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = session_dir / "postgres.log"
    log.touch()
    shutil.chown(log, user="postgres")
    subprocess.run(
        [
            *run_as,
            f"{bindir}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "PostgreSQL")
        subprocess.run(
            [
                *run_as,
                "psql" if shutil.which("psql") else f"{bindir}/psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE driftloop",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/driftloop"
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)


def _pg_bindir() -> str:
    found = shutil.which("pg_ctl")
    if found:
        return str(Path(found).parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return str(versions[-1])


@pytest.fixture(scope="session")
def s3_endpoint(session_dir: Path) -> Iterator[str]:
    """host:port of a moto S3 server; access key and secret are both ``testing``."""
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = spawn([str(exe), "-H", "127.0.0.1", "-p", str(port)], session_dir / "logs" / "moto.log")
    wait_until(lambda: port_open("127.0.0.1", port), 30, "moto_server")
    yield f"127.0.0.1:{port}"
    stop_pid(proc.pid)


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[str]:
    """URL of a Redis server of our own (Debian's redis-server, no persistence), stopped by PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run `make setup` (infra/setup-system.sh installs it)")
    port = free_port()
    workdir = session_dir / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = spawn(cmd, session_dir / "logs" / "redis.log")
    try:
        wait_until(lambda: proc.poll() is None and port_open("127.0.0.1", port), 30, "redis-server")
    except Exception:
        stop_pid(proc.pid)
        raise
    yield f"redis://127.0.0.1:{port}/0"
    stop_pid(proc.pid)
