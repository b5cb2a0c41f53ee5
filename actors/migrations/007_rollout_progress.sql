-- 007: a roll-out's failure count and progress time survive a restart of the deployments actor (issue 12).
-- They are written by the rolling-update planner (actors/rollout_progress.py) while it rolls forward; a new
-- roll-out (a new target generation) starts them again.
ALTER TABLE deployment_rollouts ADD COLUMN IF NOT EXISTS failures INTEGER NOT NULL DEFAULT 0;
-- when a new replica last became ready (or the roll-out started): the progress deadline counts from here
ALTER TABLE deployment_rollouts ADD COLUMN IF NOT EXISTS progress_at TIMESTAMPTZ;
-- the rest of the planner's track: {"generation", "phase", "best_ready", "counted": [node ids whose failure was
-- counted], "errors": {message: count}, "next_create_at": epoch seconds (the backoff after a failure)}
ALTER TABLE deployment_rollouts ADD COLUMN IF NOT EXISTS track JSONB;
