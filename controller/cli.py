"""`inferia-orch`: up / down / agent here; the admin commands live in controller/cli_commands.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from controller import cli_commands, startup
from controller.config import Settings, load_settings

app = typer.Typer(help="inferia-orchestration: the control plane for LLM endpoints on Ray.", no_args_is_help=True)
console = Console()


@app.command()
def up(
    address: Annotated[
        str | None, typer.Option(help="Ray address to join (e.g. 'auto'); default: start a local Ray")
    ] = None,
    detach: Annotated[bool, typer.Option(help="Run in the background; stop with `inferia-orch down`")] = False,
    keep_nodes: Annotated[
        bool,
        typer.Option(help="On stop, leave the nodes (engine processes) running for the next `up` to adopt"),
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(help="Start the Ray dashboard on 127.0.0.1:8265 (INFERIA_DASHBOARD_PORT) with a local Ray"),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the full logs here too (they always go to the log file)")
    ] = False,
) -> None:
    """Start the control plane (embedded PostgreSQL and Redis unless POSTGRES_DSN / REDIS_HOST are set)."""
    from controller import runtime_file

    settings = load_settings()
    if address:
        settings.ray_address = address
    if not dashboard:
        settings.dashboard = False
    if detach:
        _detach(settings, address, keep_nodes, dashboard)
        return
    settings.ensure_data_dir()
    try:  # first thing: `down` must find this process from now on, not a crashed predecessor
        runtime_file.claim(settings.data_dir)
    except runtime_file.AlreadyRunning as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    startup.run(settings, keep_nodes=keep_nodes, verbose=verbose, term=console)


def _detach(settings: Settings, address: str | None, keep_nodes: bool, dashboard: bool) -> None:
    from controller import runtime_file
    from controller.boot import token_file

    settings.ensure_data_dir()
    current = runtime_file.live(settings.data_dir, require_up_command=False)
    if current is not None:
        console.print(f"[red]error:[/red] {runtime_file.AlreadyRunning(current[0])}", soft_wrap=True)
        raise typer.Exit(1)
    log_path = settings.data_dir / "up.log"
    had_token = settings.api_token is not None or token_file(settings).exists()
    cmd = [sys.executable, "-m", "controller.cli", "up"]
    if address:
        cmd += ["--address", address]
    if keep_nodes:
        cmd.append("--keep-nodes")
    if not dashboard:
        cmd.append("--no-dashboard")
    offset = log_path.stat().st_size if log_path.exists() else 0
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    env = dict(os.environ, INFERIA_DETACHED_CHILD="1")  # the child never prints the token into its log
    with os.fdopen(fd, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    with console.status("starting the control plane in the background ...", spinner="dots"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with open(log_path, "rb") as f:  # its own short output: which stage failed and why
                    f.seek(offset)
                    console.print(f.read().decode(errors="replace").rstrip(), markup=False, highlight=False)
                console.print(f"[red]error:[/red] the control plane exited; see {log_path}")
                raise typer.Exit(1)
            info = runtime_file.read(settings.data_dir)
            if info is not None and info.pid == proc.pid and info.state == runtime_file.RUNNING:
                break
            time.sleep(0.5)
        else:
            console.print(f"[red]error:[/red] not up after 300 s; see {log_path}")
            raise typer.Exit(1)
    token = None
    if not had_token and token_file(settings).exists():
        token = token_file(settings).read_text().strip()
    console.print(f"[green]inferia-orchestration is up[/green] in the background (pid {proc.pid})")
    startup.print_ready(console, info, settings, token, output=log_path)


@app.command()
def down(timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop")] = 120.0) -> None:
    """Stop the control plane of this data dir (started with `up`, in another terminal or with --detach)."""
    from controller import runtime_file

    settings = load_settings()
    info = runtime_file.read(settings.data_dir)
    if info is None:
        console.print("nothing is running (no runtime file in the data dir)")
        return
    proc = runtime_file.owner_alive(info)
    if proc is None:
        other = runtime_file.owner_alive(info, require_up_command=False)
        if other is not None:  # a control plane embedded in another program: not ours to signal
            console.print(
                f"[red]error:[/red] the runtime file names pid {info.pid}, which is not an `inferia-orch up` "
                "process; nothing was signalled",
                soft_wrap=True,
            )
            raise typer.Exit(1)
        runtime_file.remove(settings.data_dir, pid=info.pid)
        _stop_leftover_services(settings)
        console.print(
            f"the control plane was not running (pid {info.pid} has exited or is another process now); "
            "removed the stale runtime file; nothing was signalled"
        )
        return
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    with console.status(f"stopping the control plane (pid {info.pid}) ...", spinner="dots"):
        while time.monotonic() - t0 < timeout:
            if runtime_file.owner_alive(info) is None:
                # an `up` signalled before its own handler was in place (early in its start) stops nothing:
                # the embedded servers it adopted from a crashed predecessor are stopped here
                _stop_leftover_services(settings)
                runtime_file.remove(settings.data_dir, pid=info.pid)
                console.print(f"stopped (in {time.monotonic() - t0:.1f}s)")
                return
            time.sleep(0.1)
    console.print(f"[red]error:[/red] process {info.pid} still running after {timeout:.0f}s")
    raise typer.Exit(1)


def _stop_leftover_services(settings: Settings) -> None:
    """Stop the embedded PostgreSQL and Redis of this data dir if a dead `up` left them (no-op otherwise)."""
    from controller.services import EmbeddedPostgres, EmbeddedRedis

    if settings.redis_host is None:
        EmbeddedRedis(settings.data_dir / "redis").stop()
    if settings.postgres_dsn is None:
        EmbeddedPostgres(settings.data_dir / "pgdata").stop()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def agent(ctx: typer.Context) -> None:
    """Run the node agent (used by providers; see `python -m adapters.agent --help`)."""
    from adapters.agent import main as agent_main

    raise typer.Exit(agent_main(list(ctx.args)))


cli_commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
