"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, controller-manager, scheduler.

The binaries come from KUBEBUILDER_ASSETS (envtest's convention: a folder with etcd and
kube-apiserver, ...), else from the bundle in ../shared/k8s, unpacked once into the temp dir.
Missing binaries fail the tests: nothing here skips.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.services import free_port

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT.parent / "shared" / "k8s" / "k8s-1.20.2-etcd-3.4.23-linux-amd64.tar.xz"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def find_assets() -> Path:
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env:
        d = Path(env)
        missing = [b for b in BINARIES if not (d / b).is_file()]
        if missing:
            raise RuntimeError(f"KUBEBUILDER_ASSETS={env} lacks {', '.join(missing)}")
        return d
    if not BUNDLE.is_file():
        raise RuntimeError(f"no Kubernetes binaries: set KUBEBUILDER_ASSETS or provide {BUNDLE}")
    stat = BUNDLE.stat()
    key = hashlib.sha256(f"{BUNDLE}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / f"inferia-k8s-{key}"
    if not all((dest / "bin" / b).is_file() for b in BINARIES):
        tmp = Path(tempfile.mkdtemp(prefix="inferia-k8s-unpack-"))
        with tarfile.open(BUNDLE, "r:xz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            (tmp).rename(dest)
        except OSError:  # another run unpacked it first
            pass
    return dest / "bin"


def _service_account_keys(pki: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    (pki / "sa.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def kubeconfig_text(server: str, token: str, user: str = "admin", namespace: str | None = None) -> str:
    ns = f"\n    namespace: {namespace}" if namespace else ""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {user}@test
  context:
    cluster: test
    user: {user}{ns}
current-context: {user}@test
"""


class K8sCluster:
    def __init__(self, workdir: Path, assets: Path | None = None) -> None:
        self.workdir = workdir
        self.assets = assets or find_assets()
        self.admin_token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_s = 0.0

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, name: str, n: int = 30) -> str:
        f = self.workdir / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.exists() else ""

    def start(self) -> None:
        t0 = time.monotonic()
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        _service_account_keys(pki)
        (pki / "tokens.csv").write_text(f"{self.admin_token},admin,admin,system:masters\n")
        self.kubeconfig.write_text(kubeconfig_text(self.url, self.admin_token))
        c, p = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                "--name=t",
                f"--listen-client-urls=http://127.0.0.1:{c}",
                f"--advertise-client-urls=http://127.0.0.1:{c}",
                f"--listen-peer-urls=http://127.0.0.1:{p}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p}",
                f"--initial-cluster=t=http://127.0.0.1:{p}",
                "--unsafe-no-fsync",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{c}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--disable-admission-plugins=ServiceAccount",
            ],
        )
        self._wait_ready()
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                *common,
                f"--secure-port={free_port()}",
                "--controllers=*,-nodelifecycle",
                "--use-service-account-credentials=false",
                # runs the token controller: a ServiceAccount gets a token Secret (how RBAC is tested)
                f"--service-account-private-key-file={pki / 'sa.key'}",
            ],
        )
        self._spawn("kube-scheduler", [*common, f"--secure-port={free_port()}"])
        self.startup_s = time.monotonic() - t0

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            try:
                r = httpx.get(
                    self.url + "/readyz",
                    headers={"authorization": f"Bearer {self.admin_token}"},
                    verify=False,
                    timeout=2,
                )
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s ({last}):\n{self.log_tail('kube-apiserver')}")

    def stop(self) -> None:
        """Controllers and apiserver first (an apiserver without etcd may ignore SIGTERM), then etcd."""
        order = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client as k8s

        conf = k8s.Configuration()
        conf.host = self.url
        conf.verify_ssl = False
        conf.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return k8s.ApiClient(conf)

    def write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        path.write_text(kubeconfig_text(self.url, token, user))
        return path


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    cluster = K8sCluster(tmp_path_factory.mktemp("k8s"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
