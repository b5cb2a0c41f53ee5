"""Settings read from the environment (and a `.env` file) with pydantic-settings."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.placement import parse_hosts


class Settings(BaseSettings):
    """Every knob of the control plane. Unset POSTGRES_DSN / REDIS_HOST mean: start embedded servers."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    postgres_dsn: SecretStr | None = Field(default=None, validation_alias="POSTGRES_DSN")
    redis_host: str | None = Field(default=None, validation_alias="REDIS_HOST")
    redis_port: int = Field(default=6379, ge=1, le=65535, validation_alias="REDIS_PORT")
    redis_password: SecretStr | None = Field(default=None, validation_alias="REDIS_PASSWORD")
    nosana_sidecar_url: str = Field(default="http://localhost:3000", validation_alias="NOSANA_SIDECAR_URL")
    nosana_internal_api_key: SecretStr | None = Field(default=None, validation_alias="NOSANA_INTERNAL_API_KEY")

    data_dir: Path = Field(default=Path("~/.inferia"), validation_alias=AliasChoices("INFERIA_DATA_DIR", "data_dir"))
    api_host: str = Field(default="127.0.0.1", validation_alias="INFERIA_API_HOST")
    api_port: int = Field(default=8000, ge=1, le=65535, validation_alias="INFERIA_API_PORT")
    api_token: SecretStr | None = Field(default=None, validation_alias="INFERIA_API_TOKEN")
    # the Fernet key of the deployment keys at rest; unset: <data dir>/master_key (created 0600 on first start)
    master_key: SecretStr | None = Field(default=None, validation_alias="INFERIA_MASTER_KEY")
    # GET /metrics without a token for clients on loopback (a local Prometheus); off: a metrics token is needed
    metrics_open_on_loopback: bool = Field(default=False, validation_alias="INFERIA_METRICS_OPEN_ON_LOOPBACK")
    # Serve direct ingress: the API replica also serves HTTP itself on this port (no proxy hop); node agents
    # send heartbeats there. Default: api_port + 1. Only with a Ray that `up` starts itself.
    direct_ingress: bool = Field(default=True, validation_alias="INFERIA_DIRECT_INGRESS")
    data_port: int | None = Field(default=None, ge=1, le=65535, validation_alias="INFERIA_DATA_PORT")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, validation_alias="INFERIA_HEARTBEAT_INTERVAL_S")
    heartbeat_misses: int = Field(default=3, ge=1, validation_alias="INFERIA_HEARTBEAT_MISSES")
    # how long a replica may stay unhealthy before the deployment actor replaces it
    # unset: two heartbeat intervals. A node that reported its own failure is replaced at once.
    replace_grace_s: float | None = Field(default=None, ge=0, validation_alias="INFERIA_REPLACE_GRACE_S")
    # how long a node may stay in `provisioning` without a ready heartbeat before it is failed
    provision_timeout_s: float = Field(default=600.0, gt=0, validation_alias="INFERIA_PROVISION_TIMEOUT_S")
    rollout_deadline_s: float = Field(default=600.0, gt=0, validation_alias="INFERIA_ROLLOUT_DEADLINE_S")
    reconcile_interval_s: float = Field(default=1.0, gt=0, validation_alias="INFERIA_RECONCILE_INTERVAL_S")
    # a draining node (scale-down, replacement, pool scale, API drain) is deprovisioned once no request is in
    # flight for it, or after this long
    drain_timeout_s: float = Field(default=30.0, ge=0, le=86400, validation_alias="INFERIA_DRAIN_TIMEOUT_S")
    # scale from zero: a request for a deployment with no routed replica is held this long at most, and at most
    # this many per deployment and API replica (serve_app/hold.py); past either, 503 with Retry-After
    hold_timeout_s: float = Field(default=120.0, ge=0, le=3600, validation_alias="INFERIA_HOLD_TIMEOUT_S")
    hold_queue: int = Field(default=100, ge=0, le=100_000, validation_alias="INFERIA_HOLD_QUEUE")
    # retention: events older than this are deleted; rows of terminated nodes this long after their end
    events_retention_s: float = Field(default=7 * 86400.0, gt=0, validation_alias="INFERIA_EVENTS_RETENTION_S")
    terminated_retention_s: float = Field(default=86400.0, gt=0, validation_alias="INFERIA_TERMINATED_RETENTION_S")
    ray_address: str | None = Field(default=None, validation_alias="RAY_ADDRESS")
    # the Ray dashboard of a Ray that `up` starts itself, always on 127.0.0.1 (`up --no-dashboard`: off)
    dashboard: bool = Field(default=True, validation_alias="INFERIA_DASHBOARD")
    dashboard_port: int = Field(default=8265, ge=1, le=65535, validation_alias="INFERIA_DASHBOARD_PORT")
    # 0: one Ray actor (process, ~60 MiB) per pool; N: N pool-host actors share all pools (many pools);
    # auto (the default): an actor each for the first pools, host actors beyond (actors/placement.py)
    pool_hosts: int | Literal["auto"] = Field(default="auto", validation_alias="INFERIA_POOL_HOSTS")
    # API replicas (Serve replicas of the ingress); on one machine they share the data port (SO_REUSEPORT)
    api_replicas: int = Field(default=1, ge=1, le=64, validation_alias="INFERIA_API_REPLICAS")
    # the API's addresses, comma-separated, in order: node agents post heartbeats there and clients call them,
    # failing over to the next one when one cannot be reached (several replicas on several machines, or a
    # second address in front). Unset: the data port of api_host (agents), public_url (clients).
    api_urls: str | None = Field(default=None, validation_alias="INFERIA_API_URLS")
    # public URL that node agents use to reach the API (defaults to http://api_host:api_port)
    public_url: str | None = Field(default=None, validation_alias="INFERIA_PUBLIC_URL")
    log_level: str = Field(default="INFO", validation_alias="INFERIA_LOG_LEVEL")

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("pool_hosts")
    @classmethod
    def _pool_hosts(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 1024:
            raise ValueError("INFERIA_POOL_HOSTS must be auto or a number of host actors from 0 to 1024")
        return v

    @property
    def pool_hosts_value(self) -> int:
        """INFERIA_POOL_HOSTS as the actors read it: N, or placement.AUTO."""
        return parse_hosts(self.pool_hosts)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v

    @field_validator("api_urls")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        urls = [u.strip().rstrip("/") for u in v.split(",") if u.strip()]
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"each URL must start with http:// or https:// (got {u[:80]!r})")
        return ",".join(urls)

    @model_validator(mode="after")
    def _public(self) -> Settings:
        if self.public_url is None:
            host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::") else self.api_host
            if ":" in host:
                host = f"[{host}]"
            self.public_url = f"http://{host}:{self.api_port}"
        return self

    @property
    def data_port_or_default(self) -> int:
        return self.data_port or (self.api_port + 1 if self.api_port < 65535 else self.api_port - 1)

    @property
    def heartbeat_timeout_s(self) -> float:
        """A node is unhealthy once this long has passed since its last heartbeat."""
        return self.heartbeat_interval_s * self.heartbeat_misses

    @cached_property
    def runtime_file(self) -> Path:
        """Where `up` records how to reach the running control plane (DSN, Redis, pid)."""
        return self.data_dir / "runtime.json"

    def ensure_data_dir(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        return self.data_dir


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
