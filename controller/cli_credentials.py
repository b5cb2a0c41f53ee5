"""`inferia-orch tokens create/list/revoke` and `deployments rotate-key / rate-limit` (issue 13).

Registered by controller/cli_commands.register; same plumbing (client from the settings, one red error line).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from controller.cli_commands import _ago, _print_table, _s, _table, client, handle_errors, out

tokens_app = typer.Typer(
    help="Scoped API tokens: admin (everything), gateway (routing table, /v1/models, /metrics), metrics.",
    no_args_is_help=True,
)


def tokens_table(tokens: list[dict[str, Any]]) -> Any:
    t = _table("API tokens", "name", "id", "scope", "state", "created", "last used")
    for tok in tokens:
        state = "[dim]revoked[/dim]" if tok.get("revoked_at") else "[green]active[/green]"
        t.add_row(
            _s(tok.get("name")),
            _s(tok.get("id")),
            _s(tok.get("scope")),
            state,
            _ago(tok.get("created_at")),
            _ago(tok.get("last_used")),
        )
    return t


@tokens_app.command("create")
@handle_errors
def tokens_create(
    name: Annotated[str, typer.Option(help="Unique name, e.g. edge-1")],
    scope: Annotated[str, typer.Option(help="admin, gateway or metrics")] = "gateway",
) -> None:
    """Create a token and print it once (only its hash is kept)."""
    with client() as c:
        tok = c.create_token(name, scope)
    out.print(f"token [bold]{_s(tok.get('name'))}[/bold] ({_s(tok.get('scope'))}, id {_s(tok.get('id'))}):")
    out.print(f"  {_s(tok.get('token'))}", soft_wrap=True)
    out.print("keep it: it is shown this once and cannot be read back", style="yellow")


@tokens_app.command("list")
@handle_errors
def tokens_list() -> None:
    """List the tokens (never their values)."""
    with client() as c:
        _print_table(tokens_table(c.list_tokens()), "none (create one with `inferia-orch tokens create`)")


@tokens_app.command("revoke")
@handle_errors
def tokens_revoke(ref: Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="Token name or id")]) -> None:
    """Revoke a token: refused by every API replica within about a second."""
    with client() as c:
        tok = c.revoke_token(ref)
    out.print(f"token {_s(tok.get('name'))} ({_s(tok.get('id'))}) revoked")


@handle_errors
def deployments_rotate_key(dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")]) -> None:
    """Give a deployment a new inference key (printed once); the old key is refused from now on."""
    with client() as c:
        dep = c.rotate_key(dep_id)
    out.print(f"deployment [bold]{_s(dep.get('id'))}[/bold]: new inference key")
    out.print(f"  [bold]{_s(dep.get('inference_key'))}[/bold]", soft_wrap=True)
    out.print("keep it: it is shown this once; the old key no longer works", style="yellow")


@handle_errors
def deployments_rate_limit(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    rpm: Annotated[int, typer.Argument(metavar="RPM", help="Requests per minute with its key; 0 removes the limit")],
) -> None:
    """Limit the requests per minute accepted with the deployment's inference key (429 above it)."""
    if rpm < 0:
        raise typer.BadParameter("RPM must be >= 0")
    with client() as c:
        dep = c.set_rate_limit(dep_id, rpm or None)
    limit = dep.get("rate_limit_rpm")
    out.print(f"deployment {_s(dep.get('id'))}: rate limit {'none' if limit is None else f'{limit} requests/min'}")


def register(app: typer.Typer, deployments_app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
    deployments_app.command("rotate-key")(deployments_rotate_key)
    deployments_app.command("rate-limit")(deployments_rate_limit)
