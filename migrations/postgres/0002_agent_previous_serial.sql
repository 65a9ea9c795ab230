-- The serial of the SVID an agent renewed from, accepted until the agent
-- first presents its new one: a renewal whose answer never reached the
-- agent's disk (full disk, connection reset) must not lock it out.
ALTER TABLE agents ADD COLUMN previous_svid_serial TEXT;
