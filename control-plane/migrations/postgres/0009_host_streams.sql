-- Which replica holds each host's agent stream, so that every replica answers the same
-- `connected`. Keep in step with ../sqlite/0009_host_streams.sql.
--
-- Only replicas on PostgreSQL write here: a SQLite database has one replica, whose own hub
-- knows every stream. SQLite has the same (empty) tables so that the hosts queries, which join
-- them, are written once for both backends.
--
-- Each replica process picks a random id at start and raises `seen_at` every
-- `server.replica_heartbeat`; it is alive while `seen_at` is within three heartbeats of now.
-- Times are ISO 8601, UTC, one width (text comparison is time comparison).
CREATE TABLE replicas (
    replica_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    seen_at    TEXT NOT NULL
);
-- One row per host whose stream a replica accepted; the replica deletes it (only its own) when
-- the stream ends, every row of its own at a clean shutdown. Rows of replicas dead for an hour
-- are swept by the others.
CREATE TABLE host_streams (
    host_id    TEXT PRIMARY KEY REFERENCES hosts (host_id) ON DELETE CASCADE,
    replica_id TEXT NOT NULL,
    since      TEXT NOT NULL
);
CREATE INDEX host_streams_replica ON host_streams (replica_id);
