"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder, a random 127.0.0.1 port.

The server binaries come from the Debian ``postgresql`` package (``.ci/run`` installs it when it
is missing). PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
system user. Trust authentication on 127.0.0.1 only; the server is stopped by its process id.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SEARCH = ("/usr/lib/postgresql/*/bin",)


def server_binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``; a missing server is one sentence, not a skip."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        (p for pattern in SEARCH for p in Path("/").glob(pattern.lstrip("/")) if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        pytest.fail(
            "PostgreSQL server binaries (initdb, postgres) were not found: install Debian's "
            "`postgresql` package (`apt-get install -y postgresql`, as .ci/run does)."
        )
    return candidates[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_owner(folder: Path) -> tuple[dict, str]:
    """Run as ``postgres`` when we are root (initdb refuses root); the folder becomes theirs."""
    if os.geteuid() != 0:
        return {}, pwd.getpwuid(os.geteuid()).pw_name
    owner = pwd.getpwnam("postgres")
    for path in (folder, *folder.rglob("*")):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}, owner.pw_name


@contextmanager
def postgres_cluster(databases: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield ``postgresql://<user>@127.0.0.1:<port>`` of a fresh cluster holding ``databases``.

    The cluster lives in its own folder under the system temp dir, not pytest's ``tmp_path``:
    pytest's folders are private to root, and the ``postgres`` user must reach its data.
    """
    binaries = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="cv-finetune-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    drop, user = _as_owner(root)
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    subprocess.run(
        [binaries / "initdb", "-D", data, "-U", user, "--auth=trust", "--encoding=UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        env=env,
        **drop,
    )
    port = free_port()
    log = (root / "server.log").open("w")
    settings = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"]
    server = subprocess.Popen(
        [binaries / "postgres", "-D", data, "-p", str(port), "-k", sockets, *settings],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        **drop,
    )
    url = f"postgresql://{user}@127.0.0.1:{port}"
    try:
        _wait_until_ready(server, url, root / "server.log")
        for name in databases:
            _create_database(url, name)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(server: subprocess.Popen, url: str, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            with psycopg.connect(f"{url}/postgres", connect_timeout=2):
                return
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not accept connections in 60 s"
            time.sleep(0.3)


def _create_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
