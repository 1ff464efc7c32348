"""Servers started by tests: a free port on 127.0.0.1, and waiting until one answers."""

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout: float = 180.0) -> bytes:
    """The body of the first answer from `url`; fails if the server exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"the server exited with {server.returncode}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {timeout} s") from None
            time.sleep(0.25)
