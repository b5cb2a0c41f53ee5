"""Secrets at rest (actors/secretbox.py), token scopes (actors/token_store.py), the per-key rate limit."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from actors.runtime import RuntimeConfig
from actors.secretbox import SecretBox, SecretBoxError, load_or_create_master_key
from actors.token_store import Scope, covers
from serve_app.ratelimit import OVERRIDE_TTL_S, RateLimited, RateLimiter
from tests.unit.fakes import FakeClock


def test_master_key_created_0600_once_and_env_wins(tmp_path: Path) -> None:
    key, created = load_or_create_master_key(tmp_path)
    assert created and stat.S_IMODE((tmp_path / "master_key").stat().st_mode) == 0o600
    assert load_or_create_master_key(tmp_path) == (key, False)
    (tmp_path / "other").mkdir()
    env_key, _ = load_or_create_master_key(tmp_path / "other")
    assert env_key != key
    assert load_or_create_master_key(tmp_path, env_key) == (env_key, False)  # INFERIA_MASTER_KEY wins
    with pytest.raises(ValueError, match="INFERIA_MASTER_KEY"):
        load_or_create_master_key(tmp_path, "not-a-key")


def test_seal_open_and_no_clear_text(tmp_path: Path) -> None:
    key, _ = load_or_create_master_key(tmp_path)
    box = SecretBox(key)
    sealed = box.seal("ek_secret-value")
    assert "ek_secret-value" not in sealed and box.is_sealed(sealed)
    assert box.open(sealed) == "ek_secret-value"
    assert box.open(sealed) == "ek_secret-value"  # remembered: a reload of every key decrypts nothing again
    assert box.seal("ek_secret-value") != sealed  # a random IV per seal
    assert box.open("ik_plain-from-before") == "ik_plain-from-before"  # migrated on boot
    (tmp_path / "other").mkdir()
    other, _ = load_or_create_master_key(tmp_path / "other")
    with pytest.raises(SecretBoxError) as info:
        SecretBox(other).open(sealed)
    assert "ek_secret" not in str(info.value)
    assert key not in repr(box)


def test_master_key_hidden_from_runtime_config_repr() -> None:
    cfg = RuntimeConfig(dsn="d", redis_url="r", data_dir="/x", public_url="http://h", master_key="SECRETKEY")
    assert "SECRETKEY" not in repr(cfg) and cfg.to_dict()["master_key"] == "SECRETKEY"
    assert cfg.to_dict(master_key=False)["master_key"] == ""  # the inventory and the pool actors (adapters)


def test_scopes_are_ordered() -> None:
    assert covers(Scope.ADMIN, Scope.GATEWAY) and covers(Scope.GATEWAY, Scope.METRICS)
    assert not covers(Scope.GATEWAY, Scope.ADMIN) and not covers(Scope.METRICS, Scope.GATEWAY)


def test_rate_limit_bucket_and_retry_after() -> None:
    clock = FakeClock(0.0)
    rl = RateLimiter(clock=clock)
    for _ in range(60):  # a full bucket: a burst of rpm requests passes
        rl.check("d1", 60)
    with pytest.raises(RateLimited) as info:
        rl.check("d1", 60)
    assert info.value.retry_after_s == 1 and info.value.rpm == 60
    clock.advance(1.0)  # 60/min refills one per second
    rl.check("d1", 60)
    with pytest.raises(RateLimited):
        rl.check("d1", 60)
    for _ in range(500):
        rl.check("d2", None)  # no limit
    rl.check(None, 1)  # the admin token: never limited

    rl.set_limit("d1", None)  # PATCH through this replica: at once, whatever the key index still says
    for _ in range(100):
        rl.check("d1", 60)
    rl.set_limit("d1", 2)
    rl.check("d1", None)
    rl.check("d1", None)
    with pytest.raises(RateLimited) as info:
        rl.check("d1", None)
    assert info.value.rpm == 2 and info.value.retry_after_s == 30
    clock.advance(OVERRIDE_TTL_S)  # by now the key index has read the PATCH: its figure counts again
    for _ in range(200):
        rl.check("d1", None)


def _request(client_host: str, open_on_loopback: bool, token: str | None = None) -> Any:
    from types import SimpleNamespace

    from starlette.requests import Request

    from actors.records import hash_secret
    from serve_app.auth import TokenCache

    ctx = SimpleNamespace(
        cfg=SimpleNamespace(metrics_open_on_loopback=open_on_loopback),
        tokens=TokenCache(hash_secret("it_admin"), lambda: None),
    )
    app = SimpleNamespace(state=SimpleNamespace(ctx=ctx))
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request({"type": "http", "client": (client_host, 40000), "headers": headers, "app": app})


def test_metrics_needs_a_token_unless_opened_on_loopback() -> None:
    from serve_app.auth import require_metrics
    from serve_app.errors import ApiError

    async def status(req: Any) -> int:
        try:
            await require_metrics(req)
        except ApiError as exc:
            return exc.status
        return 200

    assert asyncio.run(status(_request("127.0.0.1", False))) == 401
    assert asyncio.run(status(_request("127.0.0.1", False, "it_wrong"))) == 403
    assert asyncio.run(status(_request("127.0.0.1", False, "it_admin"))) == 200
    assert asyncio.run(status(_request("127.0.0.1", True))) == 200
    assert asyncio.run(status(_request("::1", True))) == 200
    assert asyncio.run(status(_request("10.0.0.8", True))) == 401  # opened on loopback only
