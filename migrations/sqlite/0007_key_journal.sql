-- The X.509 key journal (prepared → active → old, as JWT keys) and the
-- incident operations. A tainted key signs nothing more and agents replace
-- what it signed at once; retired_at is when a key stopped signing (0:
-- never signed or still signing), so a revocation can tell whether SVIDs it
-- signed may still be alive.
ALTER TABLE ca_keys ADD COLUMN tainted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ca_keys ADD COLUMN retired_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jwt_keys ADD COLUMN tainted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jwt_keys ADD COLUMN retired_at INTEGER NOT NULL DEFAULT 0;
