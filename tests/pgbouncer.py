"""A real PgBouncer for the tests: its own ini and auth file in a directory of its own, in front of the
test Postgres (TCP or a Unix socket), with one pool per alias, each in the pool mode it is given.

Needs the `pgbouncer` binary (Debian: `apt-get install pgbouncer`): without it the tests that use it
fail when CI is set and are skipped otherwise. PgBouncer refuses to run as root, so as root it is
started as another user (`_unprivileged_user`), in a directory that user owns."""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.support import free_port

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def binary() -> str:
    found = shutil.which("pgbouncer") or next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)
    if found:
        return found
    message = "the pgbouncer binary is not installed: `apt-get install -y --no-install-recommends pgbouncer`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


SHIPPED = Path(__file__).parent.parent / "deploy" / "pgbouncer" / "pgbouncer.ini"


def shipped_settings() -> dict[str, str]:
    """The [pgbouncer] section of the example shipped in deploy/."""
    parser = configparser.ConfigParser(comment_prefixes=(";",), interpolation=None)
    parser.read(SHIPPED)
    return dict(parser["pgbouncer"])


@dataclass(frozen=True)
class Pool:
    """One [databases] entry: the database it reaches, how it pools, and how many server connections."""

    database: str
    mode: str = "transaction"
    size: int = 4


class PgBouncer:
    def __init__(self, server_url: str, pools: Mapping[str, Pool], listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.binary = binary()
        server = urlsplit(server_url.replace("postgresql+asyncpg://", "postgresql://"))
        self.user = server.username or "postgres"
        self.password = server.password or ""
        host = parse_qs(server.query).get("host", [server.hostname or "127.0.0.1"])[0]
        self.host = listen[0]
        self.port = free_port()
        port = server.port or 5432
        run_as = _unprivileged_user(host, port)
        self.directory = Path(tempfile.mkdtemp(prefix="meter-pgbouncer-"))
        if host.startswith("/"):
            # The embedded Postgres keeps its socket in its data directory, under pytest's private
            # temporary root, which PgBouncer's user may not traverse (pytest makes it 0700 again
            # whenever a session starts): a hard link in PgBouncer's own directory reaches the same
            # socket by a path it can walk.
            os.link(Path(host) / f".s.PGSQL.{port}", self.directory / f".s.PGSQL.{port}")
            host = str(self.directory)
        entries = [
            f"{alias} = host={host} port={port} dbname={pool.database} pool_mode={pool.mode} pool_size={pool.size}"
            for alias, pool in pools.items()
        ]
        # The shipped example's settings (deploy/pgbouncer/pgbouncer.ini: transaction mode, no
        # ignore_startup_parameters, which meter must not need), with this test's addresses and files.
        settings = {
            **shipped_settings(),
            "listen_addr": ",".join(listen),
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "md5" if self.password else "trust",
            "auth_file": str(self.directory / "users.txt"),
            "admin_users": self.user,
            "logfile": str(self.directory / "pgbouncer.log"),
            "pidfile": str(self.directory / "pgbouncer.pid"),
        }
        (self.directory / "pgbouncer.ini").write_text(
            "\n".join(["[databases]", *entries, "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items()), ""])
        )
        (self.directory / "users.txt").write_text(f'"{self.user}" "{self.password}"\n')
        command = [self.binary, str(self.directory / "pgbouncer.ini")]
        if run_as is not None:
            for path in (self.directory, *self.directory.iterdir()):
                if not path.is_socket():  # the socket is the embedded Postgres's: leave it as it is
                    os.chown(path, run_as.pw_uid, run_as.pw_gid)
            command[1:1] = ["-u", run_as.pw_name]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_listening()

    def url(self, alias: str, host: str | None = None) -> str:
        """The URL of the pool `alias`, at one of the addresses PgBouncer listens on (the first by default)."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://{quote(self.user, safe='')}{secret}@{host or self.host}:{self.port}/{alias}"

    def show(self, what: str) -> list[dict[str, str]]:
        """Rows of an admin console command (SHOW POOLS, SHOW SERVERS...), read with psql: the console
        speaks only the simple query protocol."""
        psql = shutil.which("psql")
        if psql is None:
            pytest.skip("psql is needed to read PgBouncer's admin console: `apt-get install postgresql-client`")
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run(
            [psql, "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", "pgbouncer", "-AF\t", "-c", what],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=True,
        )
        header, *rows = result.stdout.splitlines()[:-1]  # the last line is "(n rows)"
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_listening(self, timeout_s: float = 20.0) -> None:
        import socket

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not listen within {timeout_s} s") from None
                time.sleep(0.05)


def _unprivileged_user(host: str, port: int) -> pwd.struct_passwd | None:
    """Who to run PgBouncer as: nobody else when not root; the owner of a Unix socket (the embedded
    Postgres's user, whom its pg_hba.conf lets in); else postgres or nobody."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/") and (owner := os.stat(Path(host) / f".s.PGSQL.{port}").st_uid) != 0:
        return pwd.getpwuid(owner)
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a postgres nor a nobody user to run pgbouncer as")
