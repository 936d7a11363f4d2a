"""A throwaway PostgreSQL server for the scale-out tests (the search's and the grid's)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields its SQLAlchemy URL. As root it runs as user postgres."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("CI: initdb is missing; .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    # pytest's tmp_path sits under a 0700 root-owned folder that a non-root server can not enter
    base = Path(tempfile.mkdtemp(prefix="diffquant-pg-"))
    user = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid}
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 60, **user}
    try:
        subprocess.run([initdb, "-D", str(base / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"], **run)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([pg_ctl, "-D", str(base / "data"), "-o", opts, "-l", str(base / "log"), "-w", "start"], **run)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (base / "data" / "postmaster.pid").exists():
            subprocess.run([pg_ctl, "-D", str(base / "data"), "-m", "immediate", "stop"], **{**run, "check": False})
        shutil.rmtree(base, ignore_errors=True)
