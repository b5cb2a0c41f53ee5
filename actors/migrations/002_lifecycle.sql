-- 002: retention and pruning (events by age, terminated node rows by the time of their end)

CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE INDEX IF NOT EXISTS inventory_nodes_terminated ON inventory_nodes (updated_at) WHERE state = 'terminated';
-- the pruning's "no replicas row names this node" check (and the foreign key) look replicas up by node
CREATE INDEX IF NOT EXISTS replicas_node ON replicas (node_id);
