-- Drift reports and login events of a host that the control plane dropped because they were over
-- the host's rate (the agent cannot be trusted to report them). Keep in step with
-- ../sqlite/0007_agent_bounds.sql.
ALTER TABLE hosts ADD COLUMN reports_dropped BIGINT NOT NULL DEFAULT 0;
-- The retention sweep deletes by the control plane's own time of receipt, oldest first.
CREATE INDEX drift_events_received_at ON drift_events (received_at, id);
CREATE INDEX login_events_received_at ON login_events (received_at, id);
