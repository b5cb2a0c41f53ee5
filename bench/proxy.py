"""The inference proxy against the engine called directly, through both ports, and against LiteLLM's proxy.

    .venv/bin/python -m bench.proxy [--seconds 8] [--concurrency 16,256] [--streams 1000]
        [--litellm /path/to/venv/bin/litellm]

In one run, on this machine: a minimal OpenAI-compatible engine (tests/support/fast_engine.py: uvicorn,
answers at once) called directly; the same engine deployed as a `custom` engine of a real control plane and
called through the API replica's data port (INFERIA_DATA_PORT, what gateways use) and through Serve's proxy
port (INFERIA_API_PORT) with the deployment's inference key; and LiteLLM's proxy (one worker, master key)
in front of the direct engine when `litellm[proxy]` is importable here or named by --litellm (skipped with
a note otherwise: it is not a dependency of this project).

- non-streamed and streamed chat completions at each concurrency with wrk (Debian's C load generator,
  `apt-get install wrk`; without it an asyncio load generator in a separate process is used, and the
  output says so): requests/s, p50, p99, errors, and the server-side CPU per 1,000 requests;
- time to first byte of paced streams (a second engine writes one event every --chunk-ms), the engine
  direct and the data port taking turns in short paired rounds (bench/ttfb.py, its own process): one
  stream, 16 streams whose starts are spread over a stream's length, 16 streams in lockstep;
- --streams streams held open through the data port at once: the API replica's memory before and while
  they are held, and whether all of them completed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.heartbeats import _pct, _run_wrk
from bench.ttfb import measure as ttfb_rounds
from controller.services import free_port

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "tests" / "support" / "fast_engine.py"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]


# ---------------------------------------------------------------- load generators
def wrk_post(url: str, body: dict[str, Any], token: str | None, seconds: float, conc: int) -> dict[str, float]:
    hdr = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n' + hdr
    script += f"wrk.body = {json.dumps(json.dumps(body))}\n"
    return _run_wrk(script, url, seconds, conc, threads=1, timeout_s=30.0)  # LiteLLM at c256 takes seconds


def pyload(url: str, body: dict[str, Any], token: str | None, seconds: float, conc: int) -> dict[str, float]:
    """The asyncio load generator of this file (`--client`), run in its own process."""
    cmd = [sys.executable, "-m", "bench.proxy", "--client", url, "--body", json.dumps(body)]
    cmd += ["--seconds", str(seconds), "--concurrency", str(conc), "--token", token or ""]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-2000:]}")
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


async def _client(url: str, body: bytes, token: str, seconds: float, conc: int, hold: int) -> dict[str, float]:
    import aiohttp

    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    n = max(conc, hold)
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=n + 8)
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:

        async def one() -> bool:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    first = None
                    async for _ in r.content.iter_any():
                        if first is None:
                            first = time.perf_counter() - t0
                            ttfb.append(first)
                    total.append(time.perf_counter() - t0)
                    if r.status != 200:
                        errors += 1
                    return r.status == 200
            except aiohttp.ClientError:
                errors += 1
                return False

        if hold:  # `hold` streams at once: say when all of them started, then wait for them to end
            tasks = [asyncio.create_task(one()) for _ in range(hold)]
            while len(ttfb) + errors < hold and not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=0.05)
            print(f"HELD {len(ttfb)}", flush=True)
            ok = sum(await asyncio.gather(*tasks))
            return {"held": float(len(ttfb)), "completed": float(ok), "errors": float(errors)}
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                await one()

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conc)))
        took = time.monotonic() - t0
    return {
        "req_s": len(total) / took,
        "p50_ms": _pct(total, 0.5) * 1000,
        "p99_ms": _pct(total, 0.99) * 1000,
        "ttfb_p50_ms": _pct(ttfb, 0.5) * 1000,
        "ttfb_p99_ms": _pct(ttfb, 0.99) * 1000,
        "errors": float(errors),
    }


# ---------------------------------------------------------------- the upstream client choice
def relay(client: str, port: int, upstream: str) -> None:
    """A minimal raw-ASGI relay on uvicorn: POST body -> upstream, answer back; with httpx (tuned: a
    connection pool as large as the load, no proxy lookup), aiohttp (tuned the same way) or the proxy's own
    (serve_app/upstream.py)."""
    import uvicorn

    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        url = upstream + scope["path"]
        headers = {"content-type": "application/json"}
        if client == "inferia":
            from serve_app.upstream import UpstreamClient, target

            c = state.get("c")
            if c is None:
                c = state["c"] = UpstreamClient()
            to = state.get(scope["path"]) or state.setdefault(scope["path"], target(upstream, scope["path"]))
            r = await c.post(to, body)
            try:
                status, data, ct = r.status, await r.read(), r.headers.get("content-type", "")
            finally:
                r.release()
        elif client == "httpx":
            import httpx

            c = state.get("c")
            if c is None:
                limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
                c = state["c"] = httpx.AsyncClient(limits=limits, timeout=300, trust_env=False)
            r = await c.post(url, content=body, headers=headers)
            status, data, ct = r.status_code, r.content, r.headers.get("content-type", "")
        else:
            import aiohttp

            s = state.get("c")
            if s is None:
                conn = aiohttp.TCPConnector(limit=0, limit_per_host=1024, keepalive_timeout=4.0)
                s = state["c"] = aiohttp.ClientSession(
                    connector=conn, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
                )
            async with s.post(url, data=body, headers=headers) as resp:
                status, data, ct = resp.status, await resp.read(), resp.headers.get("content-type", "")
        out = [(b"content-type", ct.encode()), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
                interface="asgi3", proxy_headers=False)  # fmt: skip


def clients(direct: Target, seconds: float, use_wrk: bool) -> dict[str, dict[str, float]]:
    """The same relay with each client in front of the direct engine, at 16 connections."""
    out: dict[str, dict[str, float]] = {}
    for name in ("httpx", "aiohttp", "inferia"):
        port = free_port()
        cmd = [sys.executable, "-m", "bench.proxy", "--relay", name, "--relay-port", str(port), "--body", direct.url]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            t = Target(f"relay, {name}", f"http://127.0.0.1:{port}", None, "bench", [psutil.Process(proc.pid)])
            measure(t, False, 1, 4, use_wrk)
            out[name] = measure(t, False, seconds, 16, use_wrk)
        finally:
            proc.terminate()
            proc.wait(10)
    return out


# ---------------------------------------------------------------- processes
def start_engine(port: int, model: str, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "INFERIA_INFERENCE_KEY"}
    cmd = [sys.executable, str(ENGINE), "--port", str(port), "--model", model, *(extra or [])]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def find_procs(*needles: str) -> list[psutil.Process]:
    """This run's processes whose command line has every needle: descendants of this process (the Ray it
    started, the engines its pool started), never another control plane's on the same machine."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if all(n in cmd for n in needles):
            out.append(p)
    return out


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class Target:
    name: str
    url: str
    token: str | None
    model: str
    servers: list[psutil.Process]  # whose CPU counts for this path (proxy processes and the engine)


def measure(p: Target, stream: bool, seconds: float, conc: int, use_wrk: bool) -> dict[str, float]:
    body = {"model": p.model, "messages": MESSAGES, "stream": stream}
    c0 = cpu_s(p.servers)
    res = (wrk_post if use_wrk else pyload)(p.url + CHAT, body, p.token, seconds, conc)
    requests = res["req_s"] * seconds
    res["cpu_ms_per_1000"] = 1000 * 1000 * (cpu_s(p.servers) - c0) / max(requests, 1.0)
    return res


# ---------------------------------------------------------------- LiteLLM
def litellm_command(explicit: str | None) -> list[str] | None:
    if explicit:
        return [explicit]
    if importlib.util.find_spec("litellm") is not None and importlib.util.find_spec("litellm.proxy") is not None:
        return [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"]
    return None


def start_litellm(cmd: list[str], engine_url: str, model: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {"model": f"openai/{model}", "api_base": engine_url + "/v1", "api_key": "x"},
                    }
                ],
                "general_settings": {"master_key": "sk-bench"},
            }
        )
    )
    log = (workdir / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [*cmd, "--config", str(cfg), "--port", str(port), "--num_workers", "1"], stdout=log, stderr=log
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180)
    return proc, f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", default="16,256")
    ap.add_argument("--streams", type=int, default=1000, help="streams held open at once through the data port")
    ap.add_argument("--chunk-ms", type=float, default=20.0, help="pace of the paced streams (TTFB, held streams)")
    ap.add_argument("--ttfb-rounds", type=int, default=8, help="paired rounds per TTFB case (bench/ttfb.py)")
    ap.add_argument("--litellm", default=None, help="a litellm executable (another venv) when not importable here")
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)  # the load generator's own process
    ap.add_argument("--body", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--token", default="", help=argparse.SUPPRESS)
    ap.add_argument("--hold", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--relay", default=None, help=argparse.SUPPRESS)  # a relay process (client choice)
    ap.add_argument("--relay-port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        relay(args.relay, args.relay_port, args.body)
        return
    if args.client:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        conc = int(str(args.concurrency).split(",")[0])
        res = asyncio.run(_client(args.client, args.body.encode(), args.token, args.seconds, conc, args.hold))
        print(json.dumps(res), flush=True)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from tests.support import controlplane as cpl

    use_wrk = shutil.which("wrk") is not None
    concs = [int(c) for c in args.concurrency.split(",") if c]
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[tuple[str, bool, int], dict[str, float]] = {}
    words = 10
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        direct_port, paced_port = free_port(), free_port()
        procs.append(start_engine(direct_port, "bench"))
        paced = ["--chunk-delay-ms", str(args.chunk_ms), "--words", str(words)]
        procs.append(start_engine(paced_port, "bench-paced", paced))
        direct_url, paced_url = f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{paced_port}"
        wait_http(direct_url + "/health")
        wait_http(paced_url + "/health")
        lite_cmd = litellm_command(args.litellm)
        lite = None
        if lite_cmd is not None:
            lite_proc, lite_url = start_litellm(lite_cmd, direct_url, "bench", work)
            procs.append(lite_proc)
            lite = Target("LiteLLM proxy", lite_url, "sk-bench", "bench", [psutil.Process(lite_proc.pid)])
        direct_target = Target("engine direct", direct_url, None, "bench", [psutil.Process(procs[0].pid)])
        client_choice = clients(direct_target, args.seconds, use_wrk)
        cp = cpl.start(work / "cp", interval_s=2.0)
        try:
            c = cpl.client(cp)
            pool = c.create_pool("bench")
            engine_args = [sys.executable, str(ENGINE), "--port", "{port}", "--model", "{model}"]
            c.register_model("bench", engine="custom", args=engine_args)
            c.register_model("bench-paced", engine="custom", args=[*engine_args, *paced])
            dep = c.deploy("bench", pool["name"], replicas=1)
            dep_paced = c.deploy("bench-paced", pool["name"], replicas=1)
            c.wait_deployment(dep["id"], timeout=120)
            c.wait_deployment(dep_paced["id"], timeout=120)
            table = cpl.wait_for(
                lambda: (t := c.routing_table()) and t["models"].get("bench") and t["models"].get("bench-paced") and t,
                30,
                what="both models routed",
            )
            ours_engine_port = table["models"]["bench"][0]["endpoint"].rsplit(":", 1)[1]
            engine_procs = find_procs(str(ENGINE), "--port", ours_engine_port)
            replica = find_procs("ServeReplica:inferia")
            serve_proxy = find_procs("ProxyActor")
            direct = direct_target
            data = Target("ours, data port", cp.data_url, dep["inference_key"], "bench", replica + engine_procs)
            serve = Target(
                "ours, Serve port", cp.api_url, dep["inference_key"], "bench", replica + serve_proxy + engine_procs
            )
            paths = [direct, data, serve] + ([lite] if lite else [])
            # warm up every path (connections, caches)
            for p in paths:
                measure(p, False, 1, 4, use_wrk)
            for conc in concs:
                for stream in (False, True):
                    for p in paths:
                        results[(p.name, stream, conc)] = measure(p, stream, args.seconds, conc, use_wrk)
            # time to first byte of paced streams: the engine direct and the data port in paired rounds
            # (bench/ttfb.py, its own process): one stream, 16 with starts spread over a stream's length
            # (independent clients), 16 in lockstep (a burst of 16 requests at each start)
            ttfb: dict[str, dict[str, Any]] = {}
            pair = [("engine direct", paced_url, ""), ("ours, data port", cp.data_url, dep_paced["inference_key"])]
            body = {"model": "bench-paced", "messages": MESSAGES, "stream": True}
            stream_s = words * args.chunk_ms / 1000
            for case, conc, spread in (("1 stream", 1, 0.0), ("16, spread", 16, stream_s), ("16, lockstep", 16, 0.0)):
                ttfb[case] = ttfb_rounds(pair, body, conc, args.ttfb_rounds, spread_s=spread)
            held = hold_streams(cp.data_url, dep_paced["inference_key"], args.streams, replica)
        finally:
            cp.stop()
            for pr in procs:
                pr.terminate()
            for pr in procs:
                pr.wait(10)
    report(args, use_wrk, concs, results, ttfb, held, lite is not None, client_choice)


def hold_streams(url: str, key: str, n: int, replica: list[psutil.Process]) -> dict[str, float]:
    """n paced streams at once through the data port; the replica's RSS before and while they are held."""
    if not n or not replica:
        return {}
    rss0 = replica[0].memory_info().rss
    # max_tokens: each stream lasts max_tokens x the engine's pace (10 s at 20 ms)
    body = json.dumps({"model": "bench-paced", "messages": MESSAGES, "stream": True, "max_tokens": 500})
    cmd = [sys.executable, "-m", "bench.proxy", "--client", url + CHAT, "--body", body, "--token", key]
    cmd += ["--hold", str(n), "--seconds", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    peak = rss0
    line = proc.stdout.readline()  # "HELD k": every stream has its first byte
    for _ in range(5):
        peak = max(peak, replica[0].memory_info().rss)
        time.sleep(0.05)
    out = json.loads(proc.stdout.read().strip().splitlines()[-1])
    proc.wait(60)
    out["rss_before_mib"] = rss0 / 2**20
    out["rss_held_mib"] = peak / 2**20
    out["held_line"] = float(line.split()[1]) if line.startswith("HELD") else 0.0
    return dict(out)


def _ratio(a: dict[str, float], b: dict[str, float]) -> float:
    """a's requests/s over b's (inf when b answered none in the time: LiteLLM at 256 connections here)."""
    return a["req_s"] / b["req_s"] if b["req_s"] > 0 else float("inf")


def report(
    args: argparse.Namespace,
    use_wrk: bool,
    concs: list[int],
    results: dict[tuple[str, bool, int], dict[str, float]],
    ttfb: dict[str, dict[str, Any]],
    held: dict[str, float],
    with_litellm: bool,
    client_choice: dict[str, dict[str, float]],
) -> None:
    gen = "wrk -t1 (C)" if use_wrk else "python asyncio load generator in its own process (wrk is not installed)"
    print(f"\nload generator: {gen}; {args.seconds:g} s per case; machine: {os.cpu_count()} CPUs")
    if not with_litellm:
        print(
            "LiteLLM: skipped (litellm[proxy] is not importable here; pass --litellm /path/to/venv/bin/litellm "
            "from a venv where `pip install 'litellm[proxy]'` ran)"
        )
    print("\n== upstream client choice: a minimal relay in front of the engine, 16 connections, non-streamed")
    for name, r in client_choice.items():
        print(
            f"relay with {name:<8} {r['req_s']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
            f"  relay CPU {r['cpu_ms_per_1000']:.0f} ms per 1,000 requests"
        )
    if {"httpx", "aiohttp"} <= set(client_choice):
        print(f"aiohttp / httpx = {_ratio(client_choice['aiohttp'], client_choice['httpx']):.1f}x")
    if {"inferia", "aiohttp"} <= set(client_choice):
        ours = _ratio(client_choice["inferia"], client_choice["aiohttp"])
        print(f"inferia (serve_app/upstream.py) / aiohttp = {ours:.2f}x")
    for conc in concs:
        for stream in (False, True):
            kind = "streamed (total)" if stream else "non-streamed"
            print(f"\n== chat completions, {kind}, {conc} connections")
            print(f"{'path':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/1k req':>14}")
            rows = {n: r for (n, s, c), r in results.items() if s == stream and c == conc}
            for name, r in rows.items():
                print(
                    f"{name:<18} {r['req_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7.0f}"
                    f" {r['cpu_ms_per_1000']:14.0f}"
                )
            d, o, s = rows["engine direct"], rows["ours, data port"], rows["ours, Serve port"]
            line = (
                f"ratios: data port / direct = {_ratio(o, d):.2f} (goal >= 0.35); "
                f"p50 overhead {o['p50_ms'] - d['p50_ms']:.2f} ms (goal <= 2 ms); p99 {o['p99_ms']:.1f} ms"
                f" (goal <= 20 ms); data port / Serve port = {_ratio(o, s):.1f}x"
            )
            if "LiteLLM proxy" in rows:
                line += f"; data port / LiteLLM = {_ratio(o, rows['LiteLLM proxy']):.1f}x (goal >= 30x)"
            print(line)
            if conc == 16 and not stream:
                print(f"target: data port >= 2,000 req/s at c16: {'met' if o['req_s'] >= 2000 else 'MISSED'}")
    if ttfb:
        print(
            f"\n== time to first byte, paced streams ({args.chunk_ms:g} ms between events), the engine direct and"
            f" the data port in {args.ttfb_rounds} paired rounds (bench/ttfb.py)"
        )
        for case, pair in ttfb.items():
            dd, oo = pair["engine direct"], pair["ours, data port"]
            print(
                f"{case:<13} direct p50 {dd['p50_ms']:.2f} ms p99 {dd['p99_ms']:.2f} | data port p50 {oo['p50_ms']:.2f}"
                f" ms p99 {oo['p99_ms']:.2f} | {oo['samples']} streams, {oo['errors']} errors |"
                f" over the engine's own (median of paired round p50s): {oo['paired_p50_ms']:+.2f} ms (goal <= 1)"
            )
    if held:
        per = (held["rss_held_mib"] - held["rss_before_mib"]) * 1024 / max(held["held"], 1)
        print(
            f"\n== {args.streams} streams held at once through the data port: {held['held']:.0f} started,"
            f" {held['completed']:.0f} completed, {held['errors']:.0f} errors; replica RSS"
            f" {held['rss_before_mib']:.0f} -> {held['rss_held_mib']:.0f} MiB ({per:.0f} KiB per stream)"
        )


if __name__ == "__main__":
    main()
