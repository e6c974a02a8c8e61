"""A private, throwaway MariaDB server started from Debian's ``mariadb-server`` binaries.

Own data directory, ``--no-defaults`` (the host's my.cnf is never read), TCP on loopback only, a free port.
Used by the test session, the demo and ``scripts/dbserver``::

    python -m djfs.testing.mariadb start DIR     # prints the port; stays up
    python -m djfs.testing.mariadb stop DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymysql

SERVER_BINARIES = ("mariadbd", "mysqld")
INSTALL_BINARIES = ("mariadb-install-db", "mysql_install_db")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin"])


class MariaDBUnavailable(RuntimeError):
    """The MariaDB binaries are not installed; the message says how to install them."""


def _binary(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name, path=SEARCH_PATH)
        if found:
            return found
    raise MariaDBUnavailable(f"none of {', '.join(names)} found: install Debian's mariadb-server "
                             "(`apt-get install mariadb-server`, done by scripts/test)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MariaDBServer:
    """Start/stop one private server whose files all live below ``directory``."""

    def __init__(self, directory: str | os.PathLike, port: int | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.datadir = self.directory / "data"
        self.socket = self.directory / "mysqld.sock"
        self.pidfile = self.directory / "mysqld.pid"
        self.portfile = self.directory / "port"
        self.logfile = self.directory / "error.log"
        self.tmpdir = self.directory / "tmp"  # its own: nothing else on the host may clean it
        self.port = port
        self.host = "127.0.0.1"
        self.user = "root"
        self.password = ""
        self._process: subprocess.Popen | None = None

    def _initialize(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        command = [_binary(INSTALL_BINARIES), "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                   "--auth-root-authentication-method=normal", "--skip-test-db"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")

    def start(self, timeout: float = 60.0) -> "MariaDBServer":
        server = _binary(SERVER_BINARIES)
        self._initialize()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                   f"--pid-file={self.pidfile}", f"--port={self.port}", "--bind-address=127.0.0.1",
                   f"--log-error={self.logfile}", f"--tmpdir={self.tmpdir}", "--user=root", "--skip-name-resolve",
                   "--max-allowed-packet=64M", "--innodb-buffer-pool-size=256M",
                   "--innodb-flush-log-at-trx-commit=2", "--max-connections=500",
                   "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mariadbd exited at start:\n{self._log_tail()}")
            try:
                pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                connect_timeout=1).close()
                self.portfile.write_text(str(self.port))
                return self
            except pymysql.err.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mariadbd did not answer within {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.logfile.read_text().splitlines()[-20:])
        except OSError:
            return "(no log)"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 30.0) -> None:
        pid = self._process.pid if self._process else self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                if self._process.poll() is not None:
                    break
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data (clients see dropped connections)."""
        self.stop()
        self.start()

    def connect_args(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password}

    def __enter__(self) -> "MariaDBServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m djfs.testing.mariadb",
                                     description="Start or stop a private MariaDB server in DIR.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("directory")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    server = MariaDBServer(args.directory, args.port)
    if args.action == "start":
        if server.pid() and server.portfile.exists():
            try:
                os.kill(server.pid(), 0)
                print(server.portfile.read_text())
                return 0
            except ProcessLookupError:
                pass
        server.start()
        server._process = None  # leave it running after we exit
        print(server.port)
    elif args.action == "stop":
        server.stop()
    else:
        pid = server.pid()
        alive = pid is not None and Path(f"/proc/{pid}").exists()
        print(f"running on port {server.portfile.read_text()}" if alive else "stopped")
        return 0 if alive else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
