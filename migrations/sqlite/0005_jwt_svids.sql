-- JWT-SVIDs. Entries get a JWT-SVID lifetime (0: the CA's default).
ALTER TABLE entries ADD COLUMN jwt_svid_ttl INTEGER NOT NULL DEFAULT 0;

-- JWT signing keys, apart from the X.509 ones. The private key of each is a
-- 0600 file (PKCS#8) in the data dir of the replica that made it. A key is
-- published in the bundle from the moment it is 'prepared', signs while
-- 'active', and stays published as 'old' until its not_after, past which no
-- token it signed is valid.
CREATE TABLE jwt_keys (
    kid        TEXT PRIMARY KEY,
    alg        TEXT NOT NULL,
    -- SubjectPublicKeyInfo, DER.
    public_key BLOB NOT NULL,
    status     TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    replica    TEXT NOT NULL
);
