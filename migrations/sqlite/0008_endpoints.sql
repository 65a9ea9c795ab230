-- The mesh's endpoint registry: what each agent publishes for the sidecars
-- on its node. An agent's set is replaced whole on each update (one change
-- row, kind 'endpoints', key = parent_id = the agent's SPIFFE ID).
--   session:  the publishing stream (random per stream); withdrawal after
--             the grace period deletes only that session's rows, so an
--             agent that has since reconnected (to any replica) keeps them
--   replica:  the CA replica holding that stream
--   lost_at:  when that stream ended (0 while open)
CREATE TABLE endpoints (
    agent_id      TEXT NOT NULL,
    spiffe_id     TEXT NOT NULL,
    address       TEXT NOT NULL,
    protocol      TEXT NOT NULL,
    zone          TEXT NOT NULL,
    weight        INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    session       TEXT NOT NULL,
    replica       TEXT NOT NULL,
    lost_at       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, spiffe_id, address)
);
