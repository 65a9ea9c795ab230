-- Node attestation by proof (x509pop, sshpop): what a node proved of
-- itself, as node selectors (a JSON array of strings), kept with the agent
-- and replaced on each attestation. Join-token agents have none.
ALTER TABLE agents ADD COLUMN node_selectors TEXT NOT NULL DEFAULT '[]';
