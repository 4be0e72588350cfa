-- Login events whose source address and user name were replaced by pseudonyms
-- (retention.pseudonymise_logins_after): 1 or 0. Keep in step with
-- ../sqlite/0015_login_pseudonyms.sql.
ALTER TABLE login_events ADD COLUMN pseudonymised BIGINT NOT NULL DEFAULT 0;
CREATE INDEX login_events_pseudonymise ON login_events (pseudonymised, received_at);
