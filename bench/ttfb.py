"""Time to first byte of streams, the engine direct against a proxy in front of it, measured in pairs.

    .venv/bin/python -m bench.ttfb --target direct=http://127.0.0.1:8001 --target ours=http://...@KEY
        [--concurrency 16] [--rounds 6] [--round-s 1.5] [--spread-s 0.2]

One process (the load generator), one aiohttp session per target, kept warm. The targets take turns in short
rounds (A B, B A, A B, ...) so a slow second of the machine (2 shared vCPUs, a Ray process waking up) falls
on both alike; each round runs `--concurrency` streams back to back per worker for `--round-s` seconds. A
sample is the time from sending the request to the first byte of the answer's body (the first event).

`--spread-s`: worker i starts i x spread/concurrency seconds into the round, so the streams' starts are
spread over that time as independent clients' would be (with streams of equal length they stay spread);
0 starts them all at once and keeps them in lockstep (a burst of `concurrency` requests at each start).

Printed (one JSON line): per target the p50 and p99 over every sample, the number of samples and errors,
the per-round p50s; and for each target after the first, the median over rounds of its round p50 minus the
first target's in the same round pair (`paired_p50_ms`), which is the figure to compare with a goal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.heartbeats import _pct

ROOT = Path(__file__).resolve().parents[1]


async def _rounds(
    targets: list[tuple[str, str, str]], body: bytes, conc: int, rounds: int, round_s: float, spread_s: float
) -> dict[str, Any]:
    import aiohttp

    sessions: dict[str, aiohttp.ClientSession] = {}
    samples: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    per_round: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    errors: dict[str, int] = {name: 0 for name, _, _ in targets}
    try:
        for name, _, _ in targets:
            conn = aiohttp.TCPConnector(limit=0, limit_per_host=conc + 8)
            sessions[name] = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120))

        async def one(name: str, url: str, headers: dict[str, str], out: list[float]) -> None:
            t0 = time.perf_counter()
            try:
                async with sessions[name].post(url, data=body, headers=headers) as r:
                    first = True
                    async for _ in r.content.iter_any():
                        if first:
                            out.append(time.perf_counter() - t0)
                            first = False
                    if r.status != 200:
                        errors[name] += 1
            except aiohttp.ClientError:
                errors[name] += 1

        async def run_round(name: str, url: str, token: str, seconds: float) -> list[float]:
            headers = {"content-type": "application/json"}
            if token:
                headers["authorization"] = f"Bearer {token}"
            out: list[float] = []
            stop = time.monotonic() + seconds

            async def worker(i: int) -> None:
                await asyncio.sleep(i * spread_s / conc)
                while time.monotonic() < stop:
                    await one(name, url, headers, out)

            await asyncio.gather(*(worker(i) for i in range(conc)))
            return out

        for name, url, token in targets:  # warm up: connections, the proxy's caches
            await run_round(name, url, token, 0.3)
        for r in range(rounds):
            for name, url, token in targets if r % 2 == 0 else list(reversed(targets)):
                got = await run_round(name, url, token, round_s)
                samples[name] += got
                per_round[name].append(_pct(got, 0.5) * 1000)
    finally:
        for s in sessions.values():
            await s.close()
    return summarize([name for name, _, _ in targets], samples, per_round, errors)


def summarize(
    names: list[str], samples: dict[str, list[float]], per_round: dict[str, list[float]], errors: dict[str, int]
) -> dict[str, Any]:
    """Per target: p50/p99 over every sample (seconds in, ms out), counts, the round p50s; for each target
    after the first, the median over rounds of (its round p50 - the first target's round p50)."""
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {
            "p50_ms": _pct(samples[name], 0.5) * 1000,
            "p99_ms": _pct(samples[name], 0.99) * 1000,
            "samples": len(samples[name]),
            "errors": errors[name],
            "round_p50_ms": per_round[name],
        }
        if name != names[0]:
            diffs = [o - d for o, d in zip(per_round[name], per_round[names[0]], strict=True)]
            out[name]["paired_p50_ms"] = statistics.median(diffs) if diffs else float("nan")
    return out


def measure(
    targets: list[tuple[str, str, str]],
    body: dict[str, Any],
    conc: int,
    rounds: int = 6,
    round_s: float = 1.5,
    spread_s: float = 0.0,
) -> dict[str, Any]:
    """The paired TTFB rounds in a process of their own (the caller's process is not the load generator)."""
    cmd = [sys.executable, "-m", "bench.ttfb", "--body", json.dumps(body), "--concurrency", str(conc)]
    cmd += ["--rounds", str(rounds), "--round-s", str(round_s), "--spread-s", str(spread_s)]
    for name, url, token in targets:
        cmd += ["--target", f"{name}={url}" + (f"@{token}" if token else "")]
    timeout = 60 + 2 * rounds * len(targets) * (round_s + 1)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"TTFB load generator failed:\n{out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", required=True, help="name=url[@token]; the first is the base")
    ap.add_argument("--body", default=None, help="the request (JSON); a paced chat stream of model 'bench-paced'")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--round-s", type=float, default=1.5)
    ap.add_argument("--spread-s", type=float, default=0.0)
    args = ap.parse_args()
    targets = []
    for t in args.target:
        name, _, rest = t.partition("=")
        url, _, token = rest.partition("@")
        targets.append((name, url.rstrip("/") + "/v1/chat/completions", token))
    body = args.body or json.dumps(
        {"model": "bench-paced", "messages": [{"role": "user", "content": "hello there"}], "stream": True}
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(_rounds(targets, body.encode(), args.concurrency, args.rounds, args.round_s, args.spread_s))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
