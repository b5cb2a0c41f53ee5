"""Run every benchmark, one after the other, each in its own process (each boots its own Ray).

    .venv/bin/python -m bench [--quick]
        [--only heartbeats,storage,routing,detection,replicas,scale,proxy,autoscale,metrics,rollout,api_replicas,
                cluster_replicas]
        [--log FILE]

Full sizes by default (about 15 minutes on the 2-core VM); `--quick` shrinks every benchmark to check
that it runs (its figures are not the ones to record). The heartbeat and routing benchmarks need
Debian's `wrk` (apt-get install wrk); the proxy benchmark uses it when installed (and says so when not).
Output goes to stdout and, with --log, to FILE as well.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FULL: dict[str, list[str]] = {
    "heartbeats": ["--seconds", "8"],
    "storage": ["--nodes", "10000", "--seconds", "5"],
    "routing": ["--seconds", "6", "--watchers", "1000"],
    "detection": ["--intervals", "1,5", "--trials", "3"],
    "replicas": ["--replicas", "1000"],
    "scale": ["--pools", "100", "--nodes-per-pool", "100", "--pool-hosts", "4"],
    "proxy": ["--seconds", "8", "--concurrency", "16,256", "--streams", "1000"],
    "autoscale": ["--phase-s", "12", "--zero-trials", "3"],
    "metrics": ["--nodes", "10000", "--rounds", "20"],
    "rollout": ["--replicas", "100", "--surges", "1,10"],
    "api_replicas": ["--seconds", "6", "--replicas", "3"],
    "cluster_replicas": ["--ray-nodes", "3", "--replicas", "3", "--pools", "100", "--seconds", "5"],
}
QUICK: dict[str, list[str]] = {
    "heartbeats": ["--seconds", "2", "--nodes", "100"],
    "storage": ["--nodes", "1000", "--seconds", "1"],
    "routing": ["--seconds", "2", "--watchers", "100", "--subscribers", "20"],
    "detection": ["--intervals", "1", "--trials", "1", "--nodes", "20"],
    "replicas": ["--replicas", "100"],
    "scale": ["--pools", "4", "--nodes-per-pool", "50", "--pool-hosts", "2"],
    "proxy": ["--seconds", "2", "--concurrency", "16", "--streams", "100"],
    "autoscale": ["--phase-s", "6", "--zero-trials", "1"],
    "metrics": ["--nodes", "1000", "--rounds", "3"],
    "rollout": ["--replicas", "10", "--surges", "1,5"],
    "api_replicas": ["--seconds", "2", "--nodes", "100", "--replicas", "2"],
    "cluster_replicas": ["--ray-nodes", "2", "--replicas", "2", "--pools", "4", "--nodes", "100", "--seconds", "2"],
}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="small sizes: check that everything runs")
    ap.add_argument("--only", default=",".join(FULL), help="comma-separated subset, in this order")
    ap.add_argument("--log", type=Path, default=None, help="also append the output to this file")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in plan]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(plan)}")
    log = args.log.open("a") if args.log else None
    failed: list[str] = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}", *plan[name]]
        header = f"\n######## {' '.join(cmd[1:])}"
        print(header, flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
        rc = proc.wait()
        # Ray's own logging is noisy: print the benchmark's report (everything after its first "==" line)
        start = next((i for i, ln in enumerate(lines) if ln.startswith(("\n==", "==", "load generator"))), 0)
        body = "".join(lines[start:]) if rc == 0 else "".join(lines[-80:])
        took = f"({name}: {time.monotonic() - t0:.0f} s, exit {rc})"
        print(body + took, flush=True)
        if log is not None:
            log.write(header + "\n" + body + took + "\n")
            log.flush()
        if rc != 0:
            failed.append(name)
    if log is not None:
        log.close()
    print(f"\n{len(names) - len(failed)}/{len(names)} benchmarks ran" + (f"; failed: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
