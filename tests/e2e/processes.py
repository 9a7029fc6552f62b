"""What every end-to-end test does with its server processes: a free port, a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (the only address these tests ever serve on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    argv: list[str], output: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """A server process in its own session (its workers go with it), output to ``output``."""
    with output.open("wb") as sink:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, as a supervisor stops a server; its exit status, None if it had to be killed.

    The process was started in its own session (``start_new_session=True``), so a
    SIGKILL to its group takes its workers along.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this test started
            process.wait(timeout=10)
            return None
    return process.returncode


def wait_serving(
    name: str, url: str, process: subprocess.Popen[bytes], output: Path, timeout: float
) -> None:
    """Until ``url`` answers (any status), or fail with the tail of the server's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    log = output.read_text(errors="replace")[-3000:]
    raise AssertionError(f"{name} did not start:\n{log}")
