-- 006: rolling updates (issue 12). What each generation of a deployment runs, and the state of its roll-out.
-- model_deployments.generation is the target generation; model_deployments.model_id stays the model whose name
-- clients use (the route); a generation may run another registered model under that name.
CREATE TABLE IF NOT EXISTS deployment_generations (
    deployment_id       TEXT NOT NULL REFERENCES model_deployments(id) ON DELETE CASCADE,
    generation          INTEGER NOT NULL,
    model_id            TEXT NOT NULL REFERENCES model_registry(id),
    args                JSONB,          -- null: the model's arguments
    env                 JSONB,          -- merged over the model's environment
    image               TEXT,           -- null: the model's image
    previous_generation INTEGER,        -- what ran when this one was asked for (POST .../rollback goes back to it)
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, generation)
);

CREATE TABLE IF NOT EXISTS deployment_rollouts (
    deployment_id      TEXT PRIMARY KEY REFERENCES model_deployments(id) ON DELETE CASCADE,
    current_generation INTEGER NOT NULL,  -- the generation the deployment last ran on in full
    target_generation  INTEGER NOT NULL,
    phase              TEXT NOT NULL,     -- rolling | rolling_back | done
    max_surge          INTEGER NOT NULL,
    max_unavailable    INTEGER NOT NULL,
    deadline_s         DOUBLE PRECISION,  -- null: INFERIA_ROLLOUT_DEADLINE_S
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ,
    last_failure       TEXT,
    last_failure_at    TIMESTAMPTZ
);
