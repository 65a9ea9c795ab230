-- Which CA replica holds each signing key's private key file (its
-- replica_id, a file in its data dir). A key the database gives to this
-- replica whose file is missing stops the CA instead of being passed over.
ALTER TABLE ca_keys ADD COLUMN replica TEXT;
