"""The node agent: starts the engine, probes its health and heartbeats to the control plane.

    INFERIA_NODE_TOKEN=... python -m adapters.agent --node-id N --heartbeat-url URL/inventory/heartbeat \
        --interval 5 --endpoint http://127.0.0.1:20001 --health-path /v1/models \
        --engine-cmd '["vllm", "serve", ...]' --engine-log engine.log

Secrets come only through the environment: INFERIA_NODE_TOKEN (the node's heartbeat token),
INFERIA_ENGINE_ENV (a JSON object merged into the engine's environment; it may hold the
inference key) and INFERIA_PROBE_KEY (the inference key the health probe presents). None of
them reaches the engine's inherited environment, a command line or a log line.

Exit codes: 0 stopped (signal, or the control plane answered 410 Gone), 1 the engine died or
could not start, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

import httpx

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is a dependency, but the agent can live without it
    psutil = None

TOKEN_ENV = "INFERIA_NODE_TOKEN"
ENGINE_ENV_ENV = "INFERIA_ENGINE_ENV"
PROBE_KEY_ENV = "INFERIA_PROBE_KEY"
PRIVATE_ENV = (TOKEN_ENV, ENGINE_ENV_ENV, PROBE_KEY_ENV)
# engine env vars that carry the inference key (used for the probe when no explicit probe key)
KEY_VARS = ("INFERIA_INFERENCE_KEY", "VLLM_API_KEY", "API_KEY")
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")

# The environment allow-list (the one place it is written down). An engine starts with only these of
# the agent's variables, plus the model's own `env` and the deployment's key (INFERIA_ENGINE_ENV); the
# agent itself is started (by the local provider) with these plus AGENT_ENV_EXTRA and its own private
# variables. Nothing else of the control plane's environment reaches a node.
ENGINE_ENV_ALLOWED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH"}
)
ENGINE_ENV_PREFIXES = ("LC_", "CUDA_VISIBLE_DEVICES", "NVIDIA_", "HIP_", "ROCR_")
# what the agent needs for itself and does not pass on: its Python, and reaching the control plane
AGENT_ENV_EXTRA = frozenset(
    {
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "VIRTUAL_ENV",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
# the control plane's own secrets: never in an agent's or an engine's environment (tests check these)
CONTROL_PLANE_SECRETS = (
    "INFERIA_API_TOKEN",
    "INFERIA_MASTER_KEY",
    "POSTGRES_DSN",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "REDIS_URL",
    "NOSANA_INTERNAL_API_KEY",
)


def engine_allowed(name: str) -> bool:
    return name in ENGINE_ENV_ALLOWED or name.startswith(ENGINE_ENV_PREFIXES)


def engine_environ(environ: Mapping[str, str], engine_env: dict[str, str]) -> dict[str, str]:
    """An engine's whole environment: the allow-listed variables of `environ`, then the engine's own."""
    env = {k: v for k, v in environ.items() if engine_allowed(k)}
    env.update(engine_env)
    return env


def agent_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of a provider's environment an agent may start with (its private variables are added)."""
    return {k: v for k, v in environ.items() if engine_allowed(k) or k in AGENT_ENV_EXTRA}


STARTING_BEAT_S = 0.5  # heartbeat cadence while the engine starts
STARTING_PROBE_S = 0.25  # probe cadence while the engine starts
TICK_S = 0.05
STOP_GRACE_S = 10.0
PROBE_TIMEOUT_S = 2.0
# several heartbeat URLs (INFERIA_API_URLS): a beat moves on to the next on these answers (no live replica there)
FAILOVER_STATUSES = frozenset({502, 503, 504})
PREFERRED_RETRY_S = 30.0
DEGRADE_AFTER = 3  # consecutive failed probes before a ready node reports "starting" again

log = logging.getLogger("inferia.agent")


@dataclass
class AgentConfig:
    node_id: str
    heartbeat_url: str
    token: str
    interval: float = 5.0
    endpoint: str | None = None
    health_path: str = "/v1/models"
    engine_cmd: list[str] | None = None
    engine_env: dict[str, str] = field(default_factory=dict)
    engine_log: str | None = None
    post_start_cmd: list[str] | None = None
    probe_key: str | None = None
    # tried when heartbeat_url cannot be reached (e.g. the API's direct-ingress port while its replica restarts)
    fallback_url: str | None = None
    # the engine's Prometheus metrics (its queue goes into each heartbeat); None: the engine serves none
    metrics_path: str | None = None

    @property
    def heartbeat_urls(self) -> list[str]:
        """heartbeat_url (one URL or several comma-separated, in order), then fallback_url."""
        urls = [u.strip() for u in self.heartbeat_url.split(",") if u.strip()]
        if self.fallback_url and self.fallback_url not in urls:
            urls.append(self.fallback_url)
        return urls

    def __repr__(self) -> str:  # never print the token, the key or the engine env
        return (
            f"AgentConfig(node_id={self.node_id!r}, heartbeat_url={self.heartbeat_url!r}, "
            f"interval={self.interval!r}, endpoint={self.endpoint!r}, health_path={self.health_path!r})"
        )

    def secrets(self) -> list[str]:
        found = [self.token, self.probe_key or ""]
        found += [v for k, v in self.engine_env.items() if any(m in k.upper() for m in SECRET_MARKERS)]
        return [s for s in found if s]


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Agent:
    """The agent's loop. `run()` blocks until the engine dies, the node is gone or `request_stop()`."""

    def __init__(self, cfg: AgentConfig, client: httpx.Client | None = None) -> None:
        self.cfg = cfg
        self._client = client or httpx.Client(timeout=min(5.0, max(1.0, cfg.interval)))
        self._own_client = client is None
        self._stopping = False
        self._engine: subprocess.Popen[bytes] | None = None
        self._post: subprocess.Popen[bytes] | None = None
        self._post_done = not cfg.post_start_cmd
        self._engine_log: IO[bytes] | None = None
        self._health_path = cfg.health_path or "/v1/models"
        self.state = "starting" if cfg.engine_cmd else "ready"
        self.reason: str | None = None
        self._failures = 0
        self._last_beat_outcome: str | None = None
        self._pending_failure: str | None = None
        self._secrets = cfg.secrets()
        # every beat carries (start_id, seq): seq grows by one per beat of this agent process, so the inventory
        # ignores a beat older than one it applied (a retry on the fallback port arriving late)
        self.start_id = uuid.uuid4().hex[:16]
        self._seq = 0
        self._metrics_off_until = 0.0  # after a 404 (no metrics served) the scrape pauses
        # the heartbeat URLs in order; beats go to the one that answered last (`_at`) and fail over to the next
        # on a transport error or a 502/503/504; the first is tried again every PREFERRED_RETRY_S
        self._urls = cfg.heartbeat_urls
        self._at = 0
        self._moved_at = 0.0

    # ------------------------------------------------------------------ control
    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask the loop to stop (a signal handler; only sets a flag)."""
        self._stopping = True

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self._stop_children()
            if self._engine_log is not None:
                self._engine_log.close()
            if self._own_client:
                self._client.close()

    def _run(self) -> int:
        if self.cfg.engine_cmd:
            try:
                self._engine = self._spawn(self.cfg.engine_cmd, "engine")
            except OSError as exc:
                return self._fail(f"engine could not start: {exc}")
        else:
            log.info("no engine: idle node, heartbeats only")
        next_beat = 0.0
        next_probe = 0.0
        while not self._stopping:
            code = self._check_children()
            if code is not None:
                return code
            now = time.monotonic()
            if self._engine is not None and now >= next_probe:
                changed = self._probe_and_update()
                cadence = STARTING_PROBE_S if self.state == "starting" else self.cfg.interval
                next_probe = now + cadence
                if changed:
                    next_beat = now  # report a state change at once
            if now >= next_beat:
                if self._beat() == 410:
                    log.info("the control plane terminated this node (410 Gone); stopping")
                    return 0
                cadence = STARTING_BEAT_S if self.state == "starting" else self.cfg.interval
                next_beat = time.monotonic() + cadence
            time.sleep(TICK_S)
        log.info("stop requested; stopping")
        return 0

    # ------------------------------------------------------------------ children
    def _engine_environ(self) -> dict[str, str]:
        return engine_environ(os.environ, self.cfg.engine_env)

    def _spawn(self, argv: Sequence[str], what: str) -> subprocess.Popen[bytes]:
        log.info("starting %s: %s", what, mask(" ".join(argv), self._secrets))
        if self._engine_log is None and self.cfg.engine_log:
            self._engine_log = open(self.cfg.engine_log, "ab", buffering=0)
        out: IO[bytes] | int = self._engine_log if self._engine_log is not None else subprocess.DEVNULL
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self._engine_environ(),
        )

    def _check_children(self) -> int | None:
        """An exit code for the agent when the engine or the post-start command failed."""
        if self._pending_failure:
            return self._fail(self._pending_failure)
        if self._engine is not None:
            code = self._engine.poll()
            if code is not None and not self._stopping:
                return self._fail(f"engine exited with code {code}")
        if self._post is not None:
            code = self._post.poll()
            if code is not None:
                self._post = None
                if code != 0:
                    return self._fail(f"post-start command exited with code {code}")
                log.info("post-start command finished")
                self._post_done = True
        return None

    def _fail(self, reason: str) -> int:
        reason = mask(reason, self._secrets)
        log.error("%s", reason)
        self.state, self.reason = "failed", reason
        self._beat()
        return 1

    def _stop_children(self) -> None:
        for proc in (self._post, self._engine):
            if proc is not None and proc.poll() is None:
                stop_process_tree(proc, STOP_GRACE_S)

    # ------------------------------------------------------------------ probe
    def _probe(self) -> tuple[bool, str]:
        base = (self.cfg.endpoint or "").rstrip("/")
        headers = {"Authorization": f"Bearer {self.cfg.probe_key}"} if self.cfg.probe_key else {}
        try:
            resp = self._client.get(base + self._health_path, headers=headers, timeout=PROBE_TIMEOUT_S)
            if resp.status_code == 404 and self._health_path == "/health":
                alt = self._client.get(base + "/v1/models", headers=headers, timeout=PROBE_TIMEOUT_S)
                if alt.is_success:
                    log.info("/health answers 404; probing /v1/models instead")
                    self._health_path = "/v1/models"
                    resp = alt
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        return resp.is_success, f"HTTP {resp.status_code} from {self._health_path}"

    def _probe_and_update(self) -> bool:
        """Probe the engine and update the state; True when the state changed."""
        ok, detail = self._probe()
        if ok:
            self._failures = 0
            if not self._post_done:
                if self._post is None and self.cfg.post_start_cmd:
                    try:
                        self._post = self._spawn(self.cfg.post_start_cmd, "post-start command")
                    except OSError as exc:
                        self._pending_failure = f"post-start command could not start: {exc}"
                return False
            if self.state != "ready":
                log.info("engine ready")
                self.state, self.reason = "ready", None
                return True
            self.reason = None
            return False
        self._failures += 1
        if self.state == "ready":
            self.reason = f"health probe failed: {detail}"
            if self._failures >= DEGRADE_AFTER:
                log.warning("engine stopped answering health probes (%s)", detail)
                self.state = "starting"
                self.reason = f"engine not answering health probes: {detail}"
                return True
        return False

    def health_score(self) -> int:
        if self.state != "ready":
            return 0
        return max(0, 100 - 34 * self._failures)

    # ------------------------------------------------------------------ heartbeat
    def heartbeat_body(self) -> dict[str, Any]:
        """The next beat (each call takes the next sequence number; a retry re-sends the same body)."""
        cpu, ram = _metrics()
        self._seq += 1
        return {
            "node_id": self.cfg.node_id,
            "seq": self._seq,
            "start_id": self.start_id,
            "state": self.state,
            "health_score": self.health_score(),
            "endpoint": self.cfg.endpoint if self.cfg.engine_cmd else None,
            "cpu_percent": cpu,
            "ram_used_mb": ram,
            "gpu_util": None,
            "reason": self.reason,
            **self.engine_metrics(),
        }

    def engine_metrics(self) -> dict[str, float]:
        """The engine's own queue from its Prometheus metrics (engine_running, engine_waiting, engine_kv_cache),
        scraped once per heartbeat while the engine is ready; {} when it serves none or the scrape fails."""
        path = self.cfg.metrics_path
        if not path or self.state != "ready" or not self.cfg.endpoint or time.monotonic() < self._metrics_off_until:
            return {}
        headers = {"Authorization": f"Bearer {self.cfg.probe_key}"} if self.cfg.probe_key else {}
        try:
            resp = self._client.get(self.cfg.endpoint.rstrip("/") + path, headers=headers, timeout=METRICS_TIMEOUT_S)
        except httpx.HTTPError:
            return {}
        if resp.status_code in (404, 501):
            log.info("the engine serves no metrics at %s (HTTP %d); heartbeats carry none", path, resp.status_code)
            self._metrics_off_until = time.monotonic() + METRICS_RETRY_S
            return {}
        return parse_engine_metrics(resp.text) if resp.is_success else {}

    def _beat(self) -> int | None:
        """POST one heartbeat; the HTTP status, None when the control plane was unreachable."""
        headers = {"Authorization": f"Bearer {self.cfg.token}"}
        body = self.heartbeat_body()
        resp = self._post_beat(body, headers)
        if isinstance(resp, Exception):
            self._note(f"heartbeat failed: {type(resp).__name__}: {mask(str(resp), self._secrets)}")
            return None
        if resp.is_success:
            self._note(f"heartbeat ok ({self.state})", level=logging.INFO)
        elif resp.status_code != 410:
            self._note(f"heartbeat refused: HTTP {resp.status_code}")
        return resp.status_code

    def _post_beat(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response | Exception:
        """POST the beat to the current URL, failing over to the next ones in turn: on a transport error (a
        replica killed mid-request included: a beat is idempotent, its seq makes a late copy harmless) and on
        502/503/504 (no live API replica behind that address). A 4xx is an answer: no failover."""
        now = time.monotonic()
        if self._at and now - self._moved_at >= PREFERRED_RETRY_S:
            self._at = 0  # back to the preferred URL (the direct data port) once in a while
        n = len(self._urls)
        failure: httpx.Response | Exception | None = None
        for i in range(n):
            at = (self._at + i) % n
            try:
                resp = self._client.post(self._urls[at], json=body, headers=headers)
            except httpx.HTTPError as exc:
                failure = failure or exc
                continue
            if resp.status_code in FAILOVER_STATUSES and i < n - 1:
                failure = failure or resp
                continue
            if at != self._at:
                self._at, self._moved_at = at, now
            return resp
        assert failure is not None
        return failure

    def _note(self, outcome: str, level: int = logging.WARNING) -> None:
        """Log a heartbeat outcome once per change (a restarting control plane must not flood the log)."""
        if outcome != self._last_beat_outcome:
            log.log(level, "%s", outcome)
            self._last_beat_outcome = outcome


# Prometheus series -> heartbeat field: vLLM, and llama.cpp's llama-server (with --metrics)
ENGINE_SERIES: dict[str, str] = {
    "vllm:num_requests_running": "engine_running",
    "vllm:num_requests_waiting": "engine_waiting",
    "vllm:kv_cache_usage_perc": "engine_kv_cache",  # a fraction despite the name
    "vllm:gpu_cache_usage_perc": "engine_kv_cache",  # before vLLM 0.10
    "llamacpp:requests_processing": "engine_running",
    "llamacpp:requests_deferred": "engine_waiting",
    "llamacpp:kv_cache_usage_ratio": "engine_kv_cache",
}
METRICS_TIMEOUT_S = 1.0
METRICS_RETRY_S = 60.0


def parse_engine_metrics(text: str) -> dict[str, float]:
    """The engine queue fields from a Prometheus text exposition: counts summed over label sets (one engine
    may report per model), the KV-cache fraction as the largest one; malformed lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end <= 0:
            continue
        target = ENGINE_SERIES.get(line[:name_end])
        if target is None:
            continue
        rest = line[line.find("}") + 1 :] if line[name_end] == "{" else line[name_end:]
        parts = rest.split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            continue
        if value != value or value < 0 or value == float("inf"):  # NaN, negative, inf: not a queue
            continue
        if target == "engine_kv_cache":
            out[target] = min(1.0, max(out.get(target, 0.0), value))
        else:
            out[target] = out.get(target, 0.0) + value
    return out


def _metrics() -> tuple[float | None, int | None]:
    if psutil is None:
        return None, None
    try:
        vm = psutil.virtual_memory()
        return float(psutil.cpu_percent(interval=None)), int((vm.total - vm.available) // (1024 * 1024))
    except Exception:
        return None, None


def stop_process_tree(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process and its descendants, wait up to `grace_s`, then SIGKILL what is left."""
    kids: list[Any] = []
    if psutil is not None:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            kids = []
    for target in (proc, *kids):
        _send(target, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("engine ignored SIGTERM for %.0f s; killing it", grace_s)
        proc.kill()
        proc.wait()
    if psutil is not None and kids:
        _gone, alive = psutil.wait_procs(kids, timeout=1.0)
        for child in alive:
            _send(child, signal.SIGKILL)


def _send(target: Any, sig: signal.Signals) -> None:
    try:
        target.send_signal(sig)
    except Exception:  # already gone (ProcessLookupError, psutil.NoSuchProcess, ...)
        log.debug("could not signal pid %s", getattr(target, "pid", "?"))


# ---------------------------------------------------------------------- CLI
def _json_list(value: str | None, name: str) -> list[str] | None:
    if not value:
        return None
    data = json.loads(value)
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise ValueError(f"{name} must be a non-empty JSON list of strings")
    return data


def _json_env(value: str | None, name: str) -> dict[str, str]:
    if not value:
        return {}
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"{name} must be a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def command_line(
    python: str,
    node_id: str,
    heartbeat_url: str,
    interval_s: float,
    *,
    fallback_url: str | None = None,
    endpoint: str | None = None,
    health_path: str | None = None,
    engine_cmd: Sequence[str] | None = None,
    post_start_cmd: Sequence[str] | None = None,
    script: str | None = None,
    metrics_path: str | None = None,
) -> list[str]:
    """The argv that starts this agent, for providers (local processes, a VM's run step). Secrets never
    go here: the token and engine env travel in the environment. `script`: run this file (a copy of this
    module shipped alone to a VM) instead of the `adapters.agent` module."""
    start = [python, script] if script else [python, "-m", "adapters.agent"]
    argv = [*start, "--node-id", node_id, "--heartbeat-url", heartbeat_url]
    if fallback_url:
        argv += ["--heartbeat-fallback-url", fallback_url]
    argv += ["--interval", str(interval_s)]
    if engine_cmd is not None and endpoint is not None:
        argv += ["--endpoint", endpoint, "--health-path", health_path or "/v1/models"]
        argv += ["--engine-cmd", json.dumps(list(engine_cmd))]
        if post_start_cmd:
            argv += ["--post-start-cmd", json.dumps(list(post_start_cmd))]
        if metrics_path:
            argv += ["--metrics-path", metrics_path]
    return argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inferia-agent", description="InferiA node agent")
    p.add_argument("--node-id", required=True)
    p.add_argument(
        "--heartbeat-url", required=True, help="full URL of POST /inventory/heartbeat (several: comma-separated)"
    )
    p.add_argument("--interval", type=float, default=5.0, help="heartbeat interval in seconds")
    p.add_argument("--endpoint", default=None, help="engine base URL")
    p.add_argument("--health-path", default="/v1/models")
    p.add_argument("--engine-cmd", default=None, help="engine argv as a JSON list")
    p.add_argument("--engine-env", default=None, help="extra engine env as a JSON object (no secrets)")
    p.add_argument("--engine-log", default=None, help="file the engine's output is appended to")
    p.add_argument("--post-start-cmd", default=None, help="argv (JSON list) run once the engine answers")
    p.add_argument("--heartbeat-fallback-url", default=None, help="used when --heartbeat-url is unreachable")
    p.add_argument("--metrics-path", default=None, help="engine's Prometheus metrics path (its queue is reported)")
    return p


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> AgentConfig:
    token = environ.get(TOKEN_ENV, "")
    if not token:
        raise ValueError(f"{TOKEN_ENV} is not set")
    if args.interval <= 0:
        raise ValueError("--interval must be > 0")
    engine_env = _json_env(args.engine_env, "--engine-env")
    engine_env.update(_json_env(environ.get(ENGINE_ENV_ENV), ENGINE_ENV_ENV))
    engine_cmd = _json_list(args.engine_cmd, "--engine-cmd")
    if engine_cmd and not args.endpoint:
        raise ValueError("--endpoint is required with --engine-cmd")
    probe_key = environ.get(PROBE_KEY_ENV) or next((engine_env[k] for k in KEY_VARS if engine_env.get(k)), None)
    return AgentConfig(
        node_id=args.node_id,
        heartbeat_url=args.heartbeat_url,
        fallback_url=args.heartbeat_fallback_url,
        token=token,
        interval=args.interval,
        endpoint=args.endpoint,
        health_path=args.health_path,
        engine_cmd=engine_cmd,
        engine_env=engine_env,
        engine_log=args.engine_log,
        post_start_cmd=_json_list(args.post_start_cmd, "--post-start-cmd"),
        probe_key=probe_key,
        metrics_path=args.metrics_path,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args, dict(os.environ))
    except ValueError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s agent[{cfg.node_id}] %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    agent = Agent(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, agent.request_stop)
    log.info("agent started (pid %d, interval %.1f s)", os.getpid(), cfg.interval)
    code = agent.run()
    log.info("agent exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
