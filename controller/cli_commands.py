"""The admin commands of `inferia-orch` (status, pools, models, deploy, deployments, routes, logs).

controller/cli.py creates the typer app and calls `register(app)`. Every command talks to the running
control plane through `controller.client.Client`; API and connection errors become one red line
`error: <message>` and exit code 1.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.client import Client, DeploymentFailed, InferiaError, NotFound, WaitTimeout
from controller.config import load_settings

P = ParamSpec("P")
T = TypeVar("T")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# seconds between two polls of `deploy` and `deployments delete --wait` (tests lower it)
POLL_INTERVAL = 1.0

_STATE_STYLE = {
    "running": "green",
    "ready": "green",
    "active": "green",
    "deploying": "yellow",
    "pending": "yellow",
    "provisioning": "yellow",
    "updating": "yellow",
    "degraded": "dark_orange",
    "unhealthy": "dark_orange",
    "draining": "dark_orange",
    "stopping": "dark_orange",
    "deleting": "dark_orange",
    "failed": "red",
    "stopped": "dim",
    "terminated": "dim",
    "deleted": "dim",
}


# ---------------------------------------------------------------- plumbing
def client() -> Client:
    return Client.from_settings(load_settings())


def print_error(exc: InferiaError) -> None:
    msg = f"error: {exc.message}"
    if exc.field and not exc.message.startswith(f"{exc.field}:"):  # 422s already start with "field: "
        msg += f" (field: {exc.field})"
    err.print(msg, style="red", markup=False, highlight=False, soft_wrap=True)


def handle_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """API errors, connection failures and bad settings: one red line and exit 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except InferiaError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except ValidationError as exc:  # settings from the environment
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in first.get("loc", ()))
            err.print(f"error: invalid settings: {where}: {first.get('msg')}", style="red", markup=False)
            raise typer.Exit(1) from None

    return wrapper


def _parse_pairs(items: Iterable[str], option: str, as_json: bool = False) -> dict[str, Any]:
    """KEY=VALUE items into a dict. With `as_json`, numbers, true/false/null, lists and objects are decoded."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InferiaError(f"{option} expects KEY=VALUE, got {item!r}", code="invalid_argument", field=option)
        result[key] = _json_value(value) if as_json else value
    return result


def _json_value(value: str) -> Any:
    text = value.strip()
    if text in ("true", "false", "null") or text[:1] in ("[", "{", '"', "-") or text[:1].isdigit():
        try:
            return json.loads(text)
        except ValueError:
            return value
    return value


def _styled(state: Any) -> str:
    s = str(state) if state is not None else "-"
    style = _STATE_STYLE.get(s)
    return f"[{style}]{s}[/{style}]" if style else s


def _s(value: Any) -> str:
    """A cell: '-' for nothing, markup in values escaped."""
    if value is None or value == "" or value == []:
        return "-"
    return escape(str(value))


def _ago(ts: Any) -> str:
    if not ts:
        return "-"
    try:
        when = datetime.fromisoformat(str(ts))
    except ValueError:
        return _s(ts)
    now = datetime.now(when.tzinfo) if when.tzinfo else datetime.now()
    secs = max(0.0, (now - when).total_seconds())
    if secs < 120:
        return f"{secs:.0f}s ago"
    if secs < 7200:
        return f"{secs / 60:.0f}m ago"
    return f"{secs / 3600:.1f}h ago"


# columns kept on one line (ids are copied into other commands); the rest wrap when the terminal is narrow
_NO_WRAP = {"id", "name", "state", "deployment", "node", "model"}


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", header_style="bold cyan")
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in _NO_WRAP, min_width=len(c) if c in _NO_WRAP else None)
    return t


def _print_table(table: Table, empty: str) -> None:
    if table.row_count == 0:
        out.print(f"[bold]{table.title}[/bold]: [dim]{empty}[/dim]")
    else:
        out.print(table)


# ---------------------------------------------------------------- tables
def pools_table(pools: list[dict[str, Any]]) -> Table:
    t = _table("Pools", "name", "id", "provider", "region", "state", "nodes (min/target/max)")
    for p in pools:
        sizes = f"{p.get('min_nodes', 0)}/{p.get('target_nodes', 0)}/{p.get('max_nodes', 0)}"
        t.add_row(
            _s(p.get("name")), _s(p.get("id")), _s(p.get("provider")), _s(p.get("region")),
            _styled(p.get("state")), sizes,
        )  # fmt: skip
    return t


def nodes_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    t = _table("Nodes", "id", "pool", "state", "health", "gpu", "deployment", "endpoint", "heartbeat", "reason")
    for pool_name, n in rows:
        gpu = f"{n.get('gpu_count') or 0}x {n['gpu_type']}" if n.get("gpu_type") else "-"
        since = n.get("seconds_since_heartbeat")
        beat = f"{float(since):.0f}s ago" if isinstance(since, int | float) else _ago(n.get("last_heartbeat"))
        t.add_row(
            _s(n.get("id")), _s(pool_name), _styled(n.get("state")), _s(n.get("health_score")), _s(gpu),
            _s(n.get("deployment_id")), _s(n.get("endpoint")), beat,
            _s(n.get("reason") or n.get("state_reason")),
        )  # fmt: skip
    return t


def _autoscaling_cell(d: Mapping[str, Any]) -> str:
    """'0-4 @2' (min-max at target ongoing requests) and the autoscaler's last reason; '-' without a policy."""
    a = d.get("autoscaling")
    if not a:
        return "-"
    cell = f"{a.get('min_replicas')}-{a.get('max_replicas')} @{a.get('target_ongoing_requests'):g}"
    last = d.get("autoscaler") or {}
    return f"{cell}: {last['reason']}" if last.get("reason") else cell


def deployments_table(deps: list[dict[str, Any]]) -> Table:
    t = _table("Deployments", "id", "model", "pool", "state", "ready/desired", "autoscaling", "error")
    for d in deps:
        ready = f"{d.get('ready_replicas', 0)}/{d.get('desired_replicas', 0)}"
        t.add_row(
            _s(d.get("id")), _s(d.get("model")), _s(d.get("pool")), _styled(d.get("state")), ready,
            _s(_autoscaling_cell(d)), _s(d.get("error")),
        )  # fmt: skip
    return t


def models_table(models: list[dict[str, Any]]) -> Table:
    t = _table("Models", "name", "id", "engine", "source", "gpus", "port", "args")
    for m in models:
        t.add_row(
            _s(m.get("name")), _s(m.get("id")), _s(m.get("engine")), _s(m.get("source") or m.get("image")),
            _s(m.get("gpus")), _s(m.get("port")), _s(" ".join(m.get("args") or [])),
        )  # fmt: skip
    return t


def routes_table(table: Mapping[str, Any]) -> Table:
    t = _table(f"Routing table v{table.get('version')}", "model", "endpoint", "node", "deployment", "health")
    for model, endpoints in sorted((table.get("models") or {}).items()):
        for i, ep in enumerate(endpoints):
            t.add_row(
                _s(model) if i == 0 else "", _s(ep.get("endpoint")), _s(ep.get("node_id")),
                _s(ep.get("deployment_id")), _s(ep.get("health_score")),
            )  # fmt: skip
    return t


def _dep_line(d: Mapping[str, Any]) -> str:
    return (
        f"{_s(d.get('id'))}: {_styled(d.get('state'))} "
        f"({d.get('ready_replicas', 0)}/{d.get('desired_replicas', 0)} replicas ready)"
    )


# ---------------------------------------------------------------- status
@handle_errors
def status() -> None:
    """Pools, nodes and deployments of the running control plane."""
    with client() as c:
        health = c.health()
        out.print(f"control plane at {c.base_url}: [green]{_s(health.get('status'))}[/green]"
                  f" (routing table v{_s(health.get('routing_version'))})")  # fmt: skip
        pools = c.list_pools()
        _print_table(pools_table(pools), "none")
        rows: list[tuple[str, dict[str, Any]]] = []
        for p in pools:
            if p.get("state") == "deleted":
                continue
            try:
                rows += [(p.get("name") or p["id"], n) for n in c.pool_nodes(p["id"])]
            except NotFound:  # deleted meanwhile
                continue
        _print_table(nodes_table(rows), "none")
        _print_table(deployments_table(c.list_deployments()), "none")


# ---------------------------------------------------------------- pools
pools_app = typer.Typer(help="Create, list, scale, update and delete pools of nodes.", no_args_is_help=True)


@pools_app.command("create")
@handle_errors
def pools_create(
    name: Annotated[str, typer.Argument(help="Pool name (lowercase letters, digits, '.', '_', '-')")],
    provider: Annotated[str, typer.Option(help="Provider adapter")] = "local",
    region: Annotated[str | None, typer.Option(help="Provider region")] = None,
    max_nodes: Annotated[int | None, typer.Option(help="Upper bound on nodes")] = None,
    min_nodes: Annotated[int | None, typer.Option(help="Nodes kept at all times")] = None,
    target_nodes: Annotated[int | None, typer.Option(help="Nodes to provision now")] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            metavar="KEY=VALUE",
            help="Provider config entry (repeatable); numbers, true/false and JSON lists/objects are decoded",
        ),
    ] = None,
) -> None:
    """Create a pool."""
    fields: dict[str, Any] = {"region": region, "max_nodes": max_nodes, "min_nodes": min_nodes}
    fields["target_nodes"] = target_nodes
    if config:
        fields["provider_config"] = _parse_pairs(config, "config", as_json=True)
    with client() as c:
        pool = c.create_pool(name, provider=provider, **fields)
    out.print(f"created pool [bold]{_s(pool.get('name'))}[/bold] ({_s(pool.get('id'))}, {_s(pool.get('provider'))})")


@pools_app.command("list")
@handle_errors
def pools_list() -> None:
    """List pools."""
    with client() as c:
        _print_table(pools_table(c.list_pools()), "none (create one with `inferia-orch pools create NAME`)")


@pools_app.command("scale")
@handle_errors
def pools_scale(
    name: Annotated[str, typer.Argument(help="Pool name or id")],
    target_nodes: Annotated[int, typer.Argument(help="Number of nodes wanted")],
) -> None:
    """Set a pool's target node count."""
    with client() as c:
        pool = c.scale_pool(name, target_nodes)
    created = pool.get("created_nodes")
    extra = f"; provisioning {len(created)} new node(s)" if isinstance(created, list) and created else ""
    out.print(f"pool [bold]{_s(pool.get('name'))}[/bold] target_nodes={pool.get('target_nodes')}{extra}")


@pools_app.command("update")
@handle_errors
def pools_update(
    name: Annotated[str, typer.Argument(help="Pool name or id")],
    max_nodes: Annotated[int | None, typer.Option(help="Upper bound on nodes")] = None,
    min_nodes: Annotated[int | None, typer.Option(help="Nodes kept at all times")] = None,
    target_nodes: Annotated[int | None, typer.Option(help="Idle nodes wanted")] = None,
    max_cost_per_hour: Annotated[float | None, typer.Option(help="Cost ceiling of the pool's nodes")] = None,
    no_cost_limit: Annotated[bool, typer.Option("--no-cost-limit", help="Remove max_cost_per_hour")] = False,
    gpu_type: Annotated[
        list[str] | None,
        typer.Option("--gpu-type", help="Allowed GPU type (repeatable; replaces the list)"),
    ] = None,
    any_gpu: Annotated[bool, typer.Option("--any-gpu", help="Allow every GPU type (empty list)")] = False,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            metavar="KEY=VALUE",
            help="Provider config entry that can change live (repeatable; `KEY=null` removes it)",
        ),
    ] = None,
) -> None:
    """Change a pool's limits while it runs (checked against the nodes it runs now)."""
    if max_cost_per_hour is not None and no_cost_limit:
        raise typer.BadParameter("give --max-cost-per-hour or --no-cost-limit, not both")
    if gpu_type and any_gpu:
        raise typer.BadParameter("give --gpu-type or --any-gpu, not both")
    fields: dict[str, Any] = _drop_unset({"max_nodes": max_nodes, "min_nodes": min_nodes, "target_nodes": target_nodes})
    if max_cost_per_hour is not None or no_cost_limit:
        fields["max_cost_per_hour"] = max_cost_per_hour
    if gpu_type or any_gpu:
        fields["allowed_gpu_types"] = list(gpu_type or [])
    if config:
        fields["provider_config"] = _parse_pairs(config, "config", as_json=True)
    if not fields:
        raise typer.BadParameter("nothing to change: give at least one option (see --help)")
    with client() as c:
        pool = c.update_pool(name, **fields)
    cost = pool.get("max_cost_per_hour")
    out.print(
        f"pool [bold]{_s(pool.get('name'))}[/bold] min_nodes={pool.get('min_nodes')} "
        f"target_nodes={pool.get('target_nodes')} max_nodes={pool.get('max_nodes')} "
        f"max_cost_per_hour={'none' if cost is None else cost}"
    )


def _drop_unset(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@pools_app.command("delete")
@handle_errors
def pools_delete(name: Annotated[str, typer.Argument(help="Pool name or id")]) -> None:
    """Delete a pool (its nodes are terminated in the background)."""
    with client() as c:
        res = c.delete_pool(name)
    out.print(f"pool {_s(res.get('id'))}: {_styled(res.get('state'))}")


# ---------------------------------------------------------------- models
models_app = typer.Typer(help="The model registry: what can be deployed.", no_args_is_help=True)


@models_app.command("register")
@handle_errors
def models_register(
    name: Annotated[str, typer.Argument(help="Model name (used in requests as `model`)")],
    engine: Annotated[str, typer.Option(help="llamacpp (llama-server), llamacpp-python, vllm, ollama or custom")],
    source: Annotated[str | None, typer.Option(help="HF id, GGUF path/URL or ollama tag")] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Engine argument (repeatable; use --arg=--flag for flags)")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", metavar="K=V", help="Environment (repeatable)")] = None,
    port: Annotated[int | None, typer.Option(help="Engine port")] = None,
    health_path: Annotated[str | None, typer.Option(help="Engine health path, e.g. /health")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per replica")] = None,
    image: Annotated[str | None, typer.Option(help="Container image (providers that run containers)")] = None,
) -> None:
    """Register a model."""
    fields: dict[str, Any] = {"port": port, "health_path": health_path, "gpus": gpus, "image": image}
    if arg:
        fields["args"] = list(arg)
    if env:
        fields["env"] = _parse_pairs(env, "env")
    with client() as c:
        m = c.register_model(name, engine, source=source, **fields)
    out.print(f"registered model [bold]{_s(m.get('name'))}[/bold] ({_s(m.get('id'))}, {_s(m.get('engine'))})")


@models_app.command("list")
@handle_errors
def models_list() -> None:
    """List registered models."""
    with client() as c:
        _print_table(models_table(c.list_models()), "none (register one with `inferia-orch models register`)")


@models_app.command("delete")
@handle_errors
def models_delete(name: Annotated[str, typer.Argument(help="Model name")]) -> None:
    """Remove a model from the registry (refused while deployments use it)."""
    with client() as c:
        c.delete_model(name)
    out.print(f"deleted model [bold]{_s(name)}[/bold]")


# ---------------------------------------------------------------- deploy
def _wait_running(c: Client, dep_id: str, timeout: float) -> dict[str, Any]:
    """Poll with progress lines (one per change of state or ready count) until running."""
    last: list[tuple[Any, Any, Any]] = []
    with out.status("waiting ...", spinner="dots") as spinner:

        def show(d: dict[str, Any]) -> None:
            key = (d.get("state"), d.get("ready_replicas"), d.get("desired_replicas"))
            spinner.update(_dep_line(d))
            if not last or last[-1] != key:
                last.append(key)
                out.print(f"  {_dep_line(d)}")

        return c.wait_deployment(dep_id, timeout=timeout, poll=POLL_INTERVAL, on_update=show)


def _replica_reasons(d: Mapping[str, Any]) -> None:
    for r in d.get("replicas") or []:
        if r.get("reason"):
            out.print(f"  replica {r.get('id')} ({r.get('state')}): {r.get('reason')}", style="dim", markup=False)


MinOpt = Annotated[int | None, typer.Option("--min", help="Autoscaling: fewest replicas (0: scale to zero)")]
MaxOpt = Annotated[int | None, typer.Option("--max", help="Autoscaling: most replicas")]
TargetOpt = Annotated[
    float | None, typer.Option("--target-ongoing", help="Autoscaling: requests in flight per replica wanted")
]
UpOpt = Annotated[float | None, typer.Option("--upscale-delay", help="Autoscaling: seconds of higher load to scale up")]
DownOpt = Annotated[
    float | None, typer.Option("--downscale-delay", help="Autoscaling: seconds of lower load per step down")
]
ZeroOpt = Annotated[
    float | None,
    typer.Option("--scale-to-zero-after", help="Autoscaling: seconds without a request before zero (needs --min 0)"),
]


def _policy(
    min_r: int | None,
    max_r: int | None,
    target: float | None,
    up: float | None,
    down: float | None,
    zero: float | None,
) -> dict[str, Any]:
    """The autoscaling fields given on the command line (the server fills in or keeps the others)."""
    given = {
        "min_replicas": min_r,
        "max_replicas": max_r,
        "target_ongoing_requests": target,
        "upscale_delay_s": up,
        "downscale_delay_s": down,
        "scale_to_zero_after_s": zero,
    }
    return {k: v for k, v in given.items() if v is not None}


@handle_errors
def deploy(
    model: Annotated[str, typer.Argument(help="Registered model name")],
    pool: Annotated[str, typer.Option(help="Pool name or id")],
    replicas: Annotated[
        int | None, typer.Option(help="Number of replicas (with autoscaling: the initial target, default --min)")
    ] = None,
    rate_limit_rpm: Annotated[
        int | None, typer.Option(help="Requests per minute accepted with the inference key (default: no limit)")
    ] = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    target_ongoing: TargetOpt = None,
    upscale_delay: UpOpt = None,
    downscale_delay: DownOpt = None,
    scale_to_zero_after: ZeroOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the deployment is running")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 600.0,
) -> None:
    """Deploy a registered model onto a pool and wait until it serves (autoscaled with --min/--max/...)."""
    policy = _policy(min_replicas, max_replicas, target_ongoing, upscale_delay, downscale_delay, scale_to_zero_after)
    if policy and min_replicas == 0 and scale_to_zero_after is None:
        policy["scale_to_zero_after_s"] = 300.0  # --min 0 alone: zero after 5 idle minutes
    with client() as c:
        dep = c.deploy(
            model,
            pool,
            replicas if replicas is not None or policy else 1,
            rate_limit_rpm=rate_limit_rpm,
            autoscaling=policy or None,
        )
        dep_id = str(dep["id"])
        size = f"{dep.get('desired_replicas')} replicas"
        if policy:
            size += f", autoscaling {_autoscaling_cell(dep)}"
        out.print(f"deployment [bold]{_s(dep_id)}[/bold] created ({_s(model)} on {_s(pool)}, {size})")
        if dep.get("inference_key"):
            out.print(f"inference key: [bold]{_s(dep['inference_key'])}[/bold]")
            out.print("keep it: it is shown this once and cannot be read back", style="yellow")
        if not wait:
            out.print(f"follow it with `inferia-orch deployments list` (id {_s(dep_id)})", style="dim")
            return
        try:
            final = _wait_running(c, dep_id, timeout)
        except DeploymentFailed as exc:
            print_error(exc)
            _replica_reasons(exc.deployment)
            raise typer.Exit(1) from None
        except WaitTimeout as exc:
            print_error(exc)
            if exc.deployment:
                _replica_reasons(exc.deployment)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            out.print("stopped waiting; the deployment goes on (see `inferia-orch deployments list`)")
            raise typer.Exit(130) from None
    out.print(
        f"[green]ready[/green]: {final.get('ready_replicas', 0)} replica(s) serving; send requests to "
        f"{c.base_url}/v1/chat/completions with model {_s(model)!r} and the inference key"
    )


# ---------------------------------------------------------------- deployments
deployments_app = typer.Typer(help="List, scale, stop, start and delete deployments.", no_args_is_help=True)


@deployments_app.command("list")
@handle_errors
def deployments_list() -> None:
    """List deployments with their state and ready replicas."""
    with client() as c:
        _print_table(deployments_table(c.list_deployments()), "none (create one with `inferia-orch deploy`)")


@deployments_app.command("delete")
@handle_errors
def deployments_delete(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is gone")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 600.0,
) -> None:
    """Delete a deployment (stopping it first when it still runs)."""
    with client() as c:
        res = c.delete_deployment(dep_id)
        out.print(f"deployment {_s(res.get('id'))}: {_styled(res.get('state'))}, delete requested")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        seen = res.get("state")
        while True:
            try:
                d = c.get_deployment(dep_id)
            except NotFound:
                out.print(f"deployment {_s(dep_id)} deleted")
                return
            if d.get("state") != seen:
                seen = d.get("state")
                out.print(f"  {_dep_line(d)}")
            if time.monotonic() >= deadline:
                raise InferiaError(f"deployment {dep_id} still {seen} after {timeout:g}s", code="timeout")
            time.sleep(POLL_INTERVAL)


@deployments_app.command("stop")
@handle_errors
def deployments_stop(dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")]) -> None:
    """Stop a deployment (its replicas are released; start it again later)."""
    with client() as c:
        out.print(_dep_line(c.stop_deployment(dep_id)))


@deployments_app.command("start")
@handle_errors
def deployments_start(dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")]) -> None:
    """Start a stopped or failed deployment."""
    with client() as c:
        out.print(_dep_line(c.start_deployment(dep_id)))


@deployments_app.command("scale")
@handle_errors
def deployments_scale(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    replicas: Annotated[int, typer.Argument(metavar="N", help="Replicas wanted")],
) -> None:
    """Set a deployment's replica count (with autoscaling: its current target, within --min..--max)."""
    with client() as c:
        out.print(_dep_line(c.scale_deployment(dep_id, replicas)))


@deployments_app.command("autoscale")
@handle_errors
def deployments_autoscale(
    dep_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id")],
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    target_ongoing: TargetOpt = None,
    upscale_delay: UpOpt = None,
    downscale_delay: DownOpt = None,
    scale_to_zero_after: ZeroOpt = None,
    off: Annotated[bool, typer.Option("--off", help="Remove the policy (the replica count stays where it is)")] = False,
) -> None:
    """Set, change (only the options given) or remove (--off) a deployment's autoscaling policy."""
    policy = _policy(min_replicas, max_replicas, target_ongoing, upscale_delay, downscale_delay, scale_to_zero_after)
    if off == bool(policy):
        raise InferiaError("give --off or at least one of --min/--max/--target-ongoing/...", code="invalid_request")
    with client() as c:
        d = c.set_autoscaling(dep_id, None if off else policy)
        out.print(f"{_dep_line(d)}, autoscaling {_autoscaling_cell(d)}")


# ---------------------------------------------------------------- routes, logs
@handle_errors
def routes(
    watch: Annotated[bool, typer.Option("--watch", help="Keep printing each new version (Ctrl-C stops)")] = False,
    timeout: Annotated[float, typer.Option(help="Long-poll timeout in seconds with --watch")] = 30.0,
) -> None:
    """Print the routing table: model -> endpoints, with node and health."""
    with client() as c:
        if not watch:
            _print_table(routes_table(c.routing_table()), "no ready endpoints")
            return
        try:
            for table in c.watch_routes(timeout=timeout):
                _print_table(routes_table(table), "no ready endpoints")
        except KeyboardInterrupt:
            return


@handle_errors
def logs(
    node: Annotated[str, typer.Argument(help="Node id")],
    tail: Annotated[int, typer.Option(help="Number of lines")] = 100,
) -> None:
    """Print the last lines of a node's engine log."""
    with client() as c:
        res = c.node_logs(node, tail=tail)
    for line in res.get("lines") or []:
        out.print(str(line).rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- registration
def register(app: typer.Typer) -> None:
    """Add the admin commands to the main `inferia-orch` app."""
    app.command("status")(status)
    app.add_typer(pools_app, name="pools")
    app.add_typer(models_app, name="models")
    app.command("deploy")(deploy)
    app.add_typer(deployments_app, name="deployments")
    from controller import cli_credentials  # tokens, rotate-key, rate-limit (it imports this module)

    cli_credentials.register(app, deployments_app)
    from controller import cli_rollout  # deployments update / rollback (issue 12; it imports this module)

    cli_rollout.register(deployments_app)
    app.command("routes")(routes)
    app.command("logs")(logs)
