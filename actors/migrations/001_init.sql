-- 001: the tables of the orchestration core

CREATE TABLE compute_pools (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    provider           TEXT NOT NULL,
    region             TEXT NOT NULL DEFAULT 'local',
    allowed_gpu_types  TEXT[] NOT NULL DEFAULT '{}',
    min_nodes          INTEGER NOT NULL DEFAULT 0 CHECK (min_nodes >= 0),
    max_nodes          INTEGER NOT NULL DEFAULT 16 CHECK (max_nodes >= 0),
    target_nodes       INTEGER NOT NULL DEFAULT 0 CHECK (target_nodes >= 0),
    max_cost_per_hour  DOUBLE PRECISION,
    provider_config    JSONB NOT NULL DEFAULT '{}'::jsonb,
    credential_ref     TEXT,
    state              TEXT NOT NULL DEFAULT 'active',
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (min_nodes <= max_nodes)
);

-- a deleted pool's name may be used again
CREATE UNIQUE INDEX compute_pools_name ON compute_pools (name) WHERE state <> 'deleted';

CREATE TABLE inventory_nodes (
    id                    TEXT PRIMARY KEY,
    pool_id               TEXT NOT NULL REFERENCES compute_pools(id),
    provider              TEXT NOT NULL,
    provider_instance_id  TEXT,
    deployment_id         TEXT,
    state                 TEXT NOT NULL,
    state_reason          TEXT,
    gpu_type              TEXT,
    gpu_count             INTEGER NOT NULL DEFAULT 0,
    vcpu                  INTEGER NOT NULL DEFAULT 0,
    ram_mb                INTEGER NOT NULL DEFAULT 0,
    ip_address            TEXT,
    endpoint              TEXT,
    resources             JSONB NOT NULL DEFAULT '{}'::jsonb,
    price_per_hour        DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_heartbeat        TIMESTAMPTZ,
    health_score          INTEGER,
    token_hash            TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_instance_id)
);
CREATE INDEX inventory_nodes_pool ON inventory_nodes (pool_id);
CREATE INDEX inventory_nodes_state ON inventory_nodes (state);

CREATE TABLE model_registry (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    engine        TEXT NOT NULL,
    image         TEXT,
    source        TEXT,
    args          JSONB NOT NULL DEFAULT '[]'::jsonb,
    env           JSONB NOT NULL DEFAULT '{}'::jsonb,
    port          INTEGER,
    health_path   TEXT,
    gpus          INTEGER NOT NULL DEFAULT 0,
    gpu_memory_mb INTEGER NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_deployments (
    id                 TEXT PRIMARY KEY,
    model_id           TEXT NOT NULL REFERENCES model_registry(id),
    pool_id            TEXT NOT NULL REFERENCES compute_pools(id),
    desired_replicas   INTEGER NOT NULL CHECK (desired_replicas >= 0),
    state              TEXT NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,
    error              TEXT,
    inference_key      TEXT NOT NULL,
    inference_key_hash TEXT NOT NULL,
    delete_requested   BOOLEAN NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX model_deployments_state ON model_deployments (state);

CREATE TABLE replicas (
    deployment_id TEXT NOT NULL REFERENCES model_deployments(id) ON DELETE CASCADE,
    node_id       TEXT NOT NULL REFERENCES inventory_nodes(id),
    generation    INTEGER NOT NULL DEFAULT 1,
    state         TEXT NOT NULL,
    endpoint      TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, node_id)
);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind        TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    data        JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_entity ON events (entity_type, entity_id);

-- control-plane secrets (e.g. the key node tokens are derived from); never returned by the API
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
