"""A throw-away Redis server for the tests: Debian's redis-server, a temporary folder, loopback, a free port.

Not named redis.py: this folder is on sys.path, and that would hide the redis package. The server
needs a password, so that the tests can check the password never reaches a log line or a file.
`make test` installs Debian's `redis-server` package.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from postgres import free_port

REQUIRED = os.environ.get("CIFARLAB_REQUIRE_REDIS") == "1"
PASSWORD = "redis-secret-9f2c"


class Server:
    """redis-server in the foreground, nothing saved to disk; `url` for clients; `stop()` removes everything."""

    def __init__(self) -> None:
        import redis

        self.dir = Path(tempfile.mkdtemp(prefix="cifarlab-redis-"))
        self.port = free_port()
        log = self.dir / "log"
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text()[-500:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {text}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()  # nothing to save
            self.proc.wait(timeout=30)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url():
    """A server for one test module (URL with its password); skipped with the reason where Redis is missing,
    failed under CIFARLAB_REQUIRE_REDIS=1 (CI)."""
    why = None
    try:
        import redis  # noqa: F401
    except ImportError:
        why = "redis-py is not installed (pip install 'cifarlab[sweep]')"
    if why is None and shutil.which("redis-server") is None:
        why = "redis-server is not installed (make test installs Debian's redis-server as root)"
    if why:
        if REQUIRED:
            pytest.fail(f"CIFARLAB_REQUIRE_REDIS=1 but {why}")
        pytest.skip(why)
    server = Server()
    yield server.url
    server.stop()
