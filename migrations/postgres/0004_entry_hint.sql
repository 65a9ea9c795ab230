-- The Workload API's X509SVID.hint: operator guidance on which SVID a
-- workload with several should use for what ("internal", "external").
ALTER TABLE entries ADD COLUMN hint TEXT NOT NULL DEFAULT '';
