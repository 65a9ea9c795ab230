-- The port of an endpoint's tunnel listener (HTTP/2 CONNECT over mTLS on
-- the same host as its address); 0 when it has none.
ALTER TABLE endpoints ADD COLUMN tunnel_port INTEGER NOT NULL DEFAULT 0;
