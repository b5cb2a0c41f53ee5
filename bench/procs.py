"""The processes of the Ray session this bench started: memory (RSS, PSS, USS) and CPU by actor class.

Scoped by parentage, not by name, because other Ray sessions may run on the same machine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MiB = 2**20
GiB = 2**30


@dataclass
class Proc:
    pid: int
    label: str
    rss: float = 0.0
    pss: float = 0.0
    uss: float = 0.0
    cpu_s: float = 0.0


@dataclass
class Group:
    label: str
    count: int = 0
    rss: float = 0.0
    pss: float = 0.0
    uss: float = 0.0
    cpu_s: float = 0.0
    pss_each: list[float] = field(default_factory=list)


def session_processes() -> list[psutil.Process]:
    """The Ray session this process started: every descendant but Redis (Postgres daemonizes itself).

    Scoped by parentage, not by name, because other Ray sessions may run on the same machine."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "redis-server" not in p.name():
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def actor_labels() -> dict[int, str]:
    """pid -> actor class (and name for ours) for every live actor of the connected Ray session."""
    import ray

    out: dict[int, str] = {}
    for info in ray._private.state.actors().values():  # GCS actor table; no dashboard needed
        if info.get("State") == "ALIVE" and info.get("Pid"):
            out[int(info["Pid"])] = str(info["ActorClassName"]).split(".")[-1].split(":")[0]
    return out


def label_of(p: psutil.Process, actors: dict[int, str]) -> str:
    if p.pid in actors:
        return actors[p.pid]
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0][5:].split(".")[0].split(":")[0].strip() or "ray worker"
    scripts = [Path(a).name for a in cmd[1:3] if a.endswith(".py")]
    return scripts[0] if scripts else p.name()


def measure(procs: Iterable[psutil.Process], actors: dict[int, str], full: bool = True) -> list[Proc]:
    """Memory (full: RSS, PSS, USS from smaps; else RSS only) and CPU seconds per process."""
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            rec = Proc(p.pid, label_of(p, actors), cpu_s=t.user + t.system)
            if full:
                m = p.memory_full_info()
                rec.rss, rec.pss, rec.uss = float(m.rss), float(m.pss), float(m.uss)
            else:
                rec.rss = float(p.memory_info().rss)
            out.append(rec)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def group(procs: Iterable[Proc]) -> dict[str, Group]:
    out: dict[str, Group] = {}
    for p in procs:
        g = out.setdefault(p.label, Group(p.label))
        g.count += 1
        g.rss += p.rss
        g.pss += p.pss
        g.uss += p.uss
        g.cpu_s += p.cpu_s
        g.pss_each.append(p.pss)
    return out


def totals(procs: Iterable[Proc]) -> dict[str, float]:
    ps = list(procs)
    return {
        "rss": sum(p.rss for p in ps),
        "pss": sum(p.pss for p in ps),
        "uss": sum(p.uss for p in ps),
        "cpu_s": sum(p.cpu_s for p in ps),
        "count": float(len(ps)),
    }


def cpu_by_pid(procs: Iterable[Proc]) -> dict[int, float]:
    return {p.pid: p.cpu_s for p in procs}


def cpu_delta(before: dict[int, float], after: list[Proc]) -> dict[str, float]:
    """CPU seconds spent per label between two measurements (processes born meanwhile count fully)."""
    out: dict[str, float] = {}
    for p in after:
        out[p.label] = out.get(p.label, 0.0) + p.cpu_s - before.get(p.pid, 0.0)
    return out


class PeakSampler:
    """Samples the session's total RSS every `every` s in a thread; keeps the peak and its breakdown."""

    def __init__(self, labels: Callable[[], dict[int, str]], every: float = 0.5) -> None:
        self.labels, self.every = labels, every
        self.peak = 0.0
        self.peak_groups: dict[str, Group] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        actors: dict[int, str] = {}
        while not self._stop.is_set():
            try:
                actors = self.labels() or actors
            except Exception:
                pass
            procs = measure(session_processes(), actors, full=False)
            total = sum(p.rss for p in procs)
            if total > self.peak:
                self.peak, self.peak_groups = total, group(procs)
            self._stop.wait(self.every)


def postgres_redis(data_dir: Path) -> dict[str, float]:
    """RSS and CPU seconds of the embedded Postgres (all its processes) and Redis of this control plane."""
    pg_root = str(data_dir / "pgdata")
    out = {"pg_rss": 0.0, "pg_cpu_s": 0.0, "pg_procs": 0.0, "redis_rss": 0.0, "redis_cpu_s": 0.0}
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if pg_root in cmd:
                for q in [p, *p.children(recursive=True)]:
                    t = q.cpu_times()
                    out["pg_rss"] += q.memory_info().rss
                    out["pg_cpu_s"] += t.user + t.system
                    out["pg_procs"] += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in psutil.Process().children():
        try:
            if "redis-server" in p.name():
                t = p.cpu_times()
                out["redis_rss"] += p.memory_info().rss
                out["redis_cpu_s"] += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out
