-- 003: scoped API tokens (stored hashed), per-deployment rate limit

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('admin', 'gateway', 'metrics')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    last_used   TIMESTAMPTZ
);
-- a revoked token frees its name
CREATE UNIQUE INDEX api_tokens_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- bumped by every create and revoke: each API replica polls it (cheap) and reloads its token cache on change
CREATE SEQUENCE api_tokens_version;

-- requests per minute accepted with the deployment's inference key (NULL: no limit)
ALTER TABLE model_deployments ADD COLUMN rate_limit_rpm INTEGER CHECK (rate_limit_rpm > 0);
