-- Whether the agent verified a login event: a journald record whose trusted fields are sshd's, or
-- an accepted login from a log file corroborated by a live connection of the real sshd when read.
-- 1 or 0 (no booleans: the same SQL runs on both backends). Events stored before agents verified
-- are unverified. Keep in step with ../sqlite/0006_login_verified.sql.
ALTER TABLE login_events ADD COLUMN verified BIGINT NOT NULL DEFAULT 0;
-- The live hosts view's last login counts verified accepted logins only.
CREATE INDEX login_events_host_verified_at ON login_events (host_id, outcome, verified, at);
