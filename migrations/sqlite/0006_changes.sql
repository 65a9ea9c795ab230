-- The change feed: one row per change agents or replicas must learn of, in
-- the order the changes committed. `revision` is the fleet-wide revision:
-- an entry's `revision` column is the revision of its last change, and an
-- agent that reconnects says which revision it has seen.
--   kind 'entry':  key = entry id, parent_id = the agent it concerns (an
--                  entry moved to another agent gets one row per agent)
--   kind 'agent':  key = parent_id = the agent's SPIFFE ID (ban, eviction)
--   kind 'bundle': the trust bundle changed
CREATE TABLE changes (
    revision  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    at        INTEGER NOT NULL
);
-- Pruning finds old rows by time without reading the rest.
CREATE INDEX changes_at ON changes (at);
-- Revisions continue above the per-entry counters used before.
INSERT INTO changes (revision, kind, key, parent_id, at)
    SELECT MAX(revision), 'bundle', '', '', 0 FROM entries HAVING MAX(revision) > 0;
