"""A throw-away PostgreSQL server for the tests: Debian's binaries, a temporary folder, loopback, a free port.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user
(runuser); otherwise as the current user. `make test` installs Debian's `postgresql` package.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REQUIRED = os.environ.get("CIFARLAB_REQUIRE_POSTGRES") == "1"


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin, else $PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """initdb + pg_ctl start in a temporary folder; `url` for clients; `stop()` removes everything."""

    def __init__(self) -> None:
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)")
        self.as_root = os.geteuid() == 0
        if self.as_root and shutil.which("runuser") is None:
            raise RuntimeError("running as root without runuser: cannot start PostgreSQL as the postgres user")
        # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
        self.dir = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data, log = self.dir / "data", self.dir / "log"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url():
    """A server for one test module; skipped with the reason where PostgreSQL is missing, failed under
    CIFARLAB_REQUIRE_POSTGRES=1 (CI)."""
    why = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        why = "psycopg is not installed (pip install 'cifarlab[sweep]')"
    if why is None and binaries() is None:
        why = "PostgreSQL is not installed (make test installs Debian's postgresql as root)"
    if why:
        if REQUIRED:
            pytest.fail(f"CIFARLAB_REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(why)
    server = Server()
    yield server.url
    server.stop()
