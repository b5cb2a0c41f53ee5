"""`inferia-orch deployments update / rollback` (issue 12): rolling updates from the command line.

Registered by controller/cli_commands.register; same plumbing (client from the settings, one red error line).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from controller import cli_commands as cc
from controller.cli_commands import _dep_line, _parse_pairs, _s, client, handle_errors, out
from controller.client import Client, UpdateRolledBack, WaitTimeout


def rollout_line(d: Mapping[str, Any]) -> str:
    """One line of progress: generation current -> target, updated / ready / old replicas."""
    roll = d.get("rollout") or {}
    target, current = d.get("generation"), d.get("current_generation")
    base = _dep_line(d)
    if not roll or roll.get("phase") == "done":
        return f"{base}  generation {_s(current)}"
    phase = "rolling back" if roll.get("phase") == "rolling_back" else "updating"
    return (
        f"{base}  {phase} generation {_s(current)} -> {_s(target)}: {roll.get('updated', 0)} updated, "
        f"{roll.get('ready', 0)} ready, {roll.get('old', 0)} old"
    )


def _follow(c: Client, dep: dict[str, Any], timeout: float) -> None:
    """Show each change of the roll-out's progress until it is over; exit 1 when it was rolled back."""
    generation = int(dep["generation"])
    last: list[str] = []
    with out.status("updating ...", spinner="dots") as spinner:

        def show(d: dict[str, Any]) -> None:
            line = rollout_line(d)
            spinner.update(line)
            if not last or last[-1] != line:
                last.append(line)
                out.print(f"  {line}", markup=False)

        try:
            done = c.wait_update(dep["id"], generation, timeout=timeout, poll=cc.POLL_INTERVAL, on_update=show)
        except UpdateRolledBack as exc:
            out.print(f"[red]rolled back[/red]: {exc}", markup=True)
            raise typer.Exit(1) from exc
        except WaitTimeout:
            out.print("stopped waiting; the update goes on (see `inferia-orch deployments list`)")
            raise typer.Exit(1) from None
    out.print(f"[green]updated[/green]: {rollout_line(done)}")


NoWait = Annotated[bool, typer.Option("--no-wait", help="Return once the update is accepted")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the update")]


@handle_errors
def deployments_update(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    model: Annotated[str | None, typer.Option(help="Run this registered model (name or id) instead")] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Engine argument (repeat; replaces the model's arguments)")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="K=V merged over the model's environment")] = None,
    image: Annotated[str | None, typer.Option(help="Container image")] = None,
    max_surge: Annotated[int | None, typer.Option(help="Extra replicas allowed during the update (default 1)")] = None,
    max_unavailable: Annotated[
        int | None, typer.Option(help="Ready replicas that may be missing during the update (default 0)")
    ] = None,
    deadline: Annotated[
        float | None, typer.Option("--progress-deadline", help="Roll back when no new replica is ready this long (s)")
    ] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 1800,
) -> None:
    """Change what a deployment runs by a rolling update (new replicas first, old ones drained one by one;
    rolled back by itself when the new ones fail). Shows the progress and waits unless --no-wait."""
    if model is None and arg is None and env is None and image is None:
        raise typer.BadParameter("give --model, --arg, --env and/or --image", param_hint="--model")
    with client() as c:
        dep = c.update_deployment(
            dep_id,
            model=model,
            args=list(arg) if arg is not None else None,
            env=_parse_pairs(env, "--env") if env is not None else None,
            image=image,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
            progress_deadline_s=deadline,
        )
        out.print(rollout_line(dep), markup=False)
        if not no_wait and dep.get("state") == "updating":
            _follow(c, dep, timeout)


@handle_errors
def deployments_rollback(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    max_surge: Annotated[int | None, typer.Option(help="Extra replicas allowed (default 1)")] = None,
    max_unavailable: Annotated[int | None, typer.Option(help="Ready replicas that may be missing (default 0)")] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 1800,
) -> None:
    """Go back to the previous generation (an update in progress stops; its old replicas stay)."""
    with client() as c:
        dep = c.rollback_deployment(dep_id, max_surge=max_surge, max_unavailable=max_unavailable)
        out.print(rollout_line(dep), markup=False)
        if not no_wait and dep.get("state") == "updating":
            generation = int(dep["generation"])
            last: list[str] = []

            def show(d: dict[str, Any]) -> None:
                line = rollout_line(d)
                if not last or last[-1] != line:
                    last.append(line)
                    out.print(f"  {line}", markup=False)

            try:
                done = c.wait_update(dep["id"], generation, timeout=timeout, poll=cc.POLL_INTERVAL, on_update=show)
            except (UpdateRolledBack, WaitTimeout) as exc:
                out.print(f"[red]not finished[/red]: {exc}")
                raise typer.Exit(1) from exc
            out.print(f"[green]rolled back[/green]: {rollout_line(done)}")


def register(deployments_app: typer.Typer) -> None:
    deployments_app.command("update")(deployments_update)
    deployments_app.command("rollback")(deployments_rollback)
