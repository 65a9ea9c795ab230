-- Signet CA schema, PostgreSQL flavour. Times are Unix seconds; flags are 0/1.

-- Facts about this CA's state: trust_domain, bundle_sequence.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Signing keys. Several may exist (rotation); the private key of each lives in
-- a 0600 file named after its id in a CA replica's data dir.
CREATE TABLE ca_keys (
    id          TEXT PRIMARY KEY,
    cert_der    BYTEA NOT NULL,
    -- PEM of the certificates between this one and a bundle root (upstream mode).
    chain_pem   TEXT NOT NULL,
    self_signed BIGINT NOT NULL,
    status      TEXT NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- The trust bundle's X.509 authorities.
CREATE TABLE bundle_authorities (
    fingerprint TEXT PRIMARY KEY,
    cert_der    BYTEA NOT NULL,
    not_after   BIGINT NOT NULL,
    added_at    BIGINT NOT NULL
);

CREATE TABLE entries (
    id            TEXT PRIMARY KEY,
    spiffe_id     TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    -- canonical form: sorted, newline separated
    selectors     TEXT NOT NULL,
    x509_svid_ttl BIGINT NOT NULL,
    dns_names     TEXT NOT NULL,
    admin         BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    revision      BIGINT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (spiffe_id, parent_id, selectors);
CREATE INDEX entries_parent ON entries (parent_id);

-- Join tokens, by SHA-256 of the secret. A row is deleted when used.
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    spiffe_id        TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    svid_serial      TEXT NOT NULL,
    svid_expires_at  BIGINT NOT NULL,
    banned           BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
