"""`inferia-orch`: up / down / agent here; the admin commands live in controller/cli_commands.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from controller import cli_commands
from controller.config import load_settings

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
) -> None:
    """Start the control plane (embedded PostgreSQL and Redis unless POSTGRES_DSN / REDIS_HOST are set)."""
    import logging

    from actors.runtime import setup_logging
    from controller.boot import ControlPlane

    settings = load_settings()
    if address:
        settings.ray_address = address
    if detach:
        _detach(settings, address, keep_nodes)
        return
    setup_logging(settings.log_level)
    logging.getLogger("ray").setLevel(logging.WARNING)
    cp = ControlPlane(settings, keep_nodes=keep_nodes)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        cp.start()
        signal.signal(signal.SIGTERM, _stop)  # ray.init installs its own handler: ours must win
        console.print(f"[green]inferia-orchestration is up[/green] at {cp.api_url} (docs: {cp.api_url}/docs)")
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in cp.timings.items() if k != "total_s")
        console.print(f"started in {cp.timings['total_s']:.1f}s ({parts})")
        if cp.token_created and not os.environ.get("INFERIA_DETACHED_CHILD"):
            console.print(
                f"admin API token (shown once; stored 0600 in {settings.data_dir}/api_token):\n  {cp.api_token}"
            )
        console.print("Ctrl-C stops everything this process started.", style="dim")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        cp.stop()
        console.print("stopped")


def _detach(settings: object, address: str | None, keep_nodes: bool) -> None:
    from controller.config import Settings

    assert isinstance(settings, Settings)
    settings.ensure_data_dir()
    log_path = settings.data_dir / "up.log"
    settings.runtime_file.unlink(missing_ok=True)  # a stale file from a crashed run must not look like "up"
    from controller.boot import token_file

    had_token = settings.api_token is not None or token_file(settings).exists()
    cmd = [sys.executable, "-m", "controller.cli", "up"]
    if address:
        cmd += ["--address", address]
    if keep_nodes:
        cmd.append("--keep-nodes")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    env = dict(os.environ, INFERIA_DETACHED_CHILD="1")  # the child never prints the token into its log
    with os.fdopen(fd, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            console.print(f"[red]error:[/red] the control plane exited; see {log_path}")
            raise typer.Exit(1)
        if settings.runtime_file.exists() and json.loads(settings.runtime_file.read_text()).get("pid") == proc.pid:
            console.print(f"[green]inferia-orchestration is up[/green] (pid {proc.pid}); logs: {log_path}")
            if not had_token and token_file(settings).exists():
                console.print(
                    f"admin API token (shown once; stored 0600 in {token_file(settings)}):\n  "
                    + token_file(settings).read_text().strip()
                )
            return
        time.sleep(0.5)
    console.print(f"[red]error:[/red] not up after 300 s; see {log_path}")
    raise typer.Exit(1)


@app.command()
def down(timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop")] = 120.0) -> None:
    """Stop a control plane started with `up` (in another terminal or with --detach)."""
    settings = load_settings()
    path = settings.runtime_file
    if not path.exists():
        console.print("nothing is running (no runtime file in the data dir)")
        return
    pid = int(json.loads(path.read_text())["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        console.print("the control plane was not running; cleaned up")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            console.print("stopped")
            return
        time.sleep(0.2)
    console.print(f"[red]error:[/red] process {pid} still running after {timeout:.0f}s")
    raise typer.Exit(1)


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
