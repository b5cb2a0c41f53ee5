"""Processes for Nosana tests: the real sidecar (node, simulated market), the fake IPFS service, engines.

Nothing is skipped: a missing `node` or missing sidecar packages (`cd sidecar && npm ci`) fail the test.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar"
FAKE_ENGINE = ROOT / "tests" / "support" / "fake_engine.py"
MARKET = "97G9NnvBDQ2WpKu6fasoMsAKmfj63C9rhysJnkeWodAf"
ENTRY_POINT = "nosana = adapters.nosana.adapter:NosanaAdapter"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("`node` (Node.js 20) is required for the Nosana tests")
    if not (SIDECAR / "node_modules" / "@nosana" / "sdk").is_dir():
        raise AssertionError("the sidecar's packages are missing: run `cd sidecar && npm ci`")
    return node


def expose_adapter_to_workers() -> None:
    """Make `nosana` resolvable in Ray workers (pool actors, Serve replicas), which do not see a
    `registry.register()` made in this process: a throwaway distribution declaring the adapter in the
    `inferia.adapters` entry-point group, put on the PYTHONPATH that Ray hands to its workers.
    Call before the control plane starts. Not needed once the registry lists `nosana` as a builtin."""
    base = Path(tempfile.mkdtemp(prefix="inferia-nosana-ep-"))
    dist = base / "inferia_nosana_e2e-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: inferia-nosana-e2e\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(f"[inferia.adapters]\n{ENTRY_POINT}\n")
    paths = [str(base), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    sys.path.insert(0, str(base))
    # the simulated hosts serve on this machine's loopback: trust it for moving endpoints (actors/endpoints.py)
    os.environ["INFERIA_TRUSTED_ENDPOINT_HOSTS"] = "127.0.0.1"


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_path.read_text(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; output:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class NosanaSim:
    """Fake IPFS + N fake engines (the simulated hosts' public URLs) + the real sidecar, simulated market."""

    def __init__(self, work: Path, model: str, hosts: int = 2, heartbeat_interval_s: float = 0.5) -> None:
        self.work = work
        self.key = "sk-" + secrets.token_hex(16)
        self.procs: list[Proc] = []
        node = node_binary()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("NOSANA_", "INFERIA_"))}
        ipfs = self._spawn([node, str(SIDECAR / "test" / "fake-ipfs.js"), "--port", "0"], base_env, "ipfs")
        ipfs_port = int(ipfs.wait_line(r"listening (\d+)").group(1))
        self.engine_urls = []
        for i in range(hosts):
            port = _free_port()
            eng = self._spawn(
                [sys.executable, str(FAKE_ENGINE), "--port", str(port), "--model", model], base_env, f"engine{i}"
            )
            self.engine_urls.append(f"http://127.0.0.1:{port}")
            _wait_http(self.engine_urls[-1] + "/health", eng)
        env = {
            **base_env,
            "NOSANA_INTERNAL_API_KEY": self.key,
            "NOSANA_SIMULATE": "1",
            "NOSANA_SIDECAR_PORT": "0",
            "NOSANA_STATE_DIR": str(work / "sidecar-state"),
            "NOSANA_SIM_STATE_FILE": str(work / "sim-chain.json"),
            "NOSANA_SIM_HOST_URLS": ",".join(self.engine_urls),
            "NOSANA_SIM_START_DELAY_S": "0.5",
            "NOSANA_IPFS_API": f"http://127.0.0.1:{ipfs_port}",
            "NOSANA_IPFS_GATEWAY": f"http://127.0.0.1:{ipfs_port}/ipfs/",
            "NOSANA_IPFS_JWT": "fake-jwt",
            "NOSANA_WATCH_INTERVAL_S": "0.2",
            "NOSANA_HEARTBEAT_INTERVAL_S": str(heartbeat_interval_s),
            "NOSANA_REDEPLOY_BACKOFF_S": "0.2",
            "NOSANA_MARKETS": f'[{{"address": "{MARKET}", "name": "sim-3090", "gpu_type": "RTX 3090"}}]',
        }
        sidecar = self._spawn([node, str(SIDECAR / "src" / "main.js")], env, "sidecar", cwd=SIDECAR)
        sidecar_port = sidecar.wait_line(r"listening on http://127\.0\.0\.1:(\d+)").group(1)
        self.url = f"http://127.0.0.1:{sidecar_port}"
        self.http = httpx.Client(base_url=self.url, headers={"x-internal-api-key": self.key}, timeout=10)

    def _spawn(self, argv: list[str], env: dict[str, str], name: str, cwd: Path | None = None) -> Proc:
        p = Proc(argv, env, self.work / f"{name}.log", cwd)
        self.procs.append(p)
        return p

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.http.close()
        for p in reversed(self.procs):
            p.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer; output:\n{proc.log_path.read_text(errors='replace')[-2000:]}")
