"""Settings from environment variables: defaults, overrides, validation, derived values, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from controller.config import Settings, load_settings

ENV_VARS = [
    "POSTGRES_DSN",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "NOSANA_SIDECAR_URL",
    "NOSANA_INTERNAL_API_KEY",
    "INFERIA_DATA_DIR",
    "DATA_DIR",
    "INFERIA_API_HOST",
    "INFERIA_API_PORT",
    "INFERIA_API_TOKEN",
    "INFERIA_HEARTBEAT_INTERVAL_S",
    "INFERIA_HEARTBEAT_MISSES",
    "INFERIA_REPLACE_GRACE_S",
    "INFERIA_PROVISION_TIMEOUT_S",
    "INFERIA_RECONCILE_INTERVAL_S",
    "RAY_ADDRESS",
    "INFERIA_PUBLIC_URL",
    "INFERIA_LOG_LEVEL",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    monkeypatch.setenv("HOME", str(tmp_path))


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults(tmp_path: Path) -> None:
    s = settings()
    assert s.api_host == "127.0.0.1"
    assert s.api_port == 8000
    assert s.heartbeat_interval_s == 5.0
    assert s.heartbeat_misses == 3
    assert s.heartbeat_timeout_s == 15.0
    assert s.nosana_sidecar_url == "http://localhost:3000"
    assert s.redis_port == 6379
    assert s.postgres_dsn is None and s.redis_host is None  # embedded servers
    assert s.api_token is None and s.redis_password is None and s.nosana_internal_api_key is None
    assert s.replace_grace_s is None  # boot uses two heartbeat intervals
    assert s.provision_timeout_s == 600.0
    assert s.reconcile_interval_s == 1.0
    assert s.ray_address is None
    assert s.log_level == "INFO"
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.data_dir == (tmp_path / ".inferia").resolve()
    assert s.runtime_file == s.data_dir / "runtime.json"


def test_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "POSTGRES_DSN": "postgresql://u:pw@db:5432/inferia",
        "REDIS_HOST": "redis.internal",
        "REDIS_PORT": "6380",
        "NOSANA_SIDECAR_URL": "http://sidecar:3001",
        "INFERIA_DATA_DIR": str(tmp_path / "data"),
        "INFERIA_API_HOST": "10.1.2.3",
        "INFERIA_API_PORT": "9000",
        "INFERIA_HEARTBEAT_INTERVAL_S": "2.5",
        "INFERIA_HEARTBEAT_MISSES": "4",
        "INFERIA_REPLACE_GRACE_S": "30",
        "INFERIA_PROVISION_TIMEOUT_S": "120",
        "INFERIA_RECONCILE_INTERVAL_S": "0.5",
        "RAY_ADDRESS": "ray://head:10001",
        "INFERIA_LOG_LEVEL": "debug",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = settings()
    assert s.postgres_dsn is not None
    assert s.postgres_dsn.get_secret_value() == "postgresql://u:pw@db:5432/inferia"
    assert s.redis_host == "redis.internal" and s.redis_port == 6380
    assert s.nosana_sidecar_url == "http://sidecar:3001"
    assert s.data_dir == (tmp_path / "data").resolve()
    assert s.api_host == "10.1.2.3" and s.api_port == 9000
    assert s.heartbeat_interval_s == 2.5 and s.heartbeat_misses == 4
    assert s.heartbeat_timeout_s == 10.0
    assert s.replace_grace_s == 30.0
    assert s.provision_timeout_s == 120.0
    assert s.reconcile_interval_s == 0.5
    assert s.ray_address == "ray://head:10001"
    assert s.log_level == "DEBUG"
    assert s.public_url == "http://10.1.2.3:9000"


def test_data_dir_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERIA_DATA_DIR", "~/state")
    assert settings().data_dir == (tmp_path / "state").resolve()


def test_keyword_overrides(tmp_path: Path) -> None:
    s = load_settings(_env_file=None, INFERIA_API_PORT=8123, INFERIA_HEARTBEAT_MISSES=5)
    assert s.api_port == 8123
    assert s.heartbeat_timeout_s == 25.0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INFERIA_API_PORT", "0"),
        ("INFERIA_API_PORT", "65536"),
        ("INFERIA_API_PORT", "http"),
        ("REDIS_PORT", "-1"),
        ("INFERIA_HEARTBEAT_INTERVAL_S", "0"),
        ("INFERIA_HEARTBEAT_INTERVAL_S", "-1"),
        ("INFERIA_HEARTBEAT_INTERVAL_S", "fast"),
        ("INFERIA_HEARTBEAT_MISSES", "0"),
        ("INFERIA_HEARTBEAT_MISSES", "1.5"),
        ("INFERIA_REPLACE_GRACE_S", "-1"),
        ("INFERIA_PROVISION_TIMEOUT_S", "0"),
        ("INFERIA_RECONCILE_INTERVAL_S", "0"),
        ("INFERIA_LOG_LEVEL", "verbose"),
        ("INFERIA_LOG_LEVEL", "CRITICAL"),
    ],
)
def test_invalid_values_raise(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        settings()
    assert var in str(info.value)


@pytest.mark.parametrize(("interval", "misses", "timeout"), [("1", "1", 1.0), ("0.5", "10", 5.0), ("5", "3", 15.0)])
def test_heartbeat_timeout(monkeypatch: pytest.MonkeyPatch, interval: str, misses: str, timeout: float) -> None:
    monkeypatch.setenv("INFERIA_HEARTBEAT_INTERVAL_S", interval)
    monkeypatch.setenv("INFERIA_HEARTBEAT_MISSES", misses)
    assert settings().heartbeat_timeout_s == pytest.approx(timeout)


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", "8000", "http://127.0.0.1:8000"),
        ("0.0.0.0", "8080", "http://127.0.0.1:8080"),  # a wildcard bind is reached on loopback
        ("::", "8000", "http://127.0.0.1:8000"),
        ("api.example.com", "443", "http://api.example.com:443"),
    ],
)
def test_public_url_derivation(monkeypatch: pytest.MonkeyPatch, host: str, port: str, url: str) -> None:
    monkeypatch.setenv("INFERIA_API_HOST", host)
    monkeypatch.setenv("INFERIA_API_PORT", port)
    assert settings().public_url == url


def test_public_url_for_an_ipv6_host_is_bracketed(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    monkeypatch.setenv("INFERIA_API_HOST", "::1")
    url = settings().public_url
    assert url is not None
    parsed = httpx.URL(url)  # node agents must be able to use it
    assert (parsed.host, parsed.port) == ("::1", 8000)


def test_explicit_public_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERIA_API_HOST", "0.0.0.0")
    monkeypatch.setenv("INFERIA_PUBLIC_URL", "https://inferia.example.com")
    assert settings().public_url == "https://inferia.example.com"


SECRETS = {
    "POSTGRES_DSN": "postgresql://user:pg-pass-7781@db/x",
    "REDIS_PASSWORD": "redis-pass-5521",
    "NOSANA_INTERNAL_API_KEY": "nosana-key-9912",
    "INFERIA_API_TOKEN": "api-token-3342",
}


def test_secrets_are_secret_str_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    s = settings()
    fields = [s.postgres_dsn, s.redis_password, s.nosana_internal_api_key, s.api_token]
    assert all(isinstance(f, SecretStr) for f in fields)
    assert {f.get_secret_value() for f in fields if f is not None} == set(SECRETS.values())
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump())]
    for text in shown:
        for secret in SECRETS.values():
            assert secret not in text


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("INFERIA_API_PORT=8181\nUNRELATED_KEY=1\n")
    s = Settings(_env_file=str(env_file))  # type: ignore[call-arg]
    assert s.api_port == 8181
    monkeypatch.setenv("INFERIA_API_PORT", "8282")  # the environment wins over the file
    assert Settings(_env_file=str(env_file)).api_port == 8282  # type: ignore[call-arg]


def test_ensure_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERIA_DATA_DIR", str(tmp_path / "d" / "e"))
    s = settings()
    path = s.ensure_data_dir()
    assert path.is_dir()
    assert path.stat().st_mode & 0o777 == 0o700
