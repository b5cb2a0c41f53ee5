-- 005: autoscaling (issue 11): a deployment's policy (null: a fixed replica count) and the autoscaler's state
-- (its timers and last decision), so a restarted DeploymentActor continues where it was
ALTER TABLE model_deployments ADD COLUMN IF NOT EXISTS autoscaling JSONB;
ALTER TABLE model_deployments ADD COLUMN IF NOT EXISTS autoscaler_state JSONB;
