-- The live hosts view asks for each host's newest accepted login.
CREATE INDEX login_events_host_outcome_at ON login_events (host_id, outcome, at);
