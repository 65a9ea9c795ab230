//! The CA's signing authority: the key that signs SVIDs, its certificate, and
//! the chain that links it to the trust bundle.
//!
//! On first start the CA creates an EC P-256 key and either a self-signed
//! root or, given an upstream certificate and key, an intermediate signed by
//! that upstream (so Signet plugs into an existing PKI). The certificate goes
//! into the database, the private key into `<data_dir>/keys/<id>.pem` (mode
//! 0600, never logged); both survive restarts. Before serving, the authority
//! signs a probe SVID and verifies it against the bundle, so a broken key or
//! upstream chain stops the CA instead of issuing unverifiable SVIDs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use signet_identity::x509_svid::{
    from_unix_seconds, signing_params, signing_violations, unix_seconds,
};
use signet_identity::{
    certificates_from_pem, certificates_to_pem, verify_x509_svid, TrustBundle, TrustDomain,
};

use crate::config::CaConfig;
use crate::registry::join_token::hex;
use crate::store::{CaKeyRecord, KeyJournal, KeyStatus, KeyTable, Store, StoreError};

/// Why the signing authority could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system failure on key material.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The upstream certificate/key/bundle cannot be used.
    #[error("upstream CA: {0}")]
    Upstream(String),
    /// Key generation or signing failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    /// Stored state is inconsistent.
    #[error("{0}")]
    Inconsistent(String),
    /// The database gives this replica an active key whose file is gone.
    #[error("the active CA signing key {id} of this replica has no key file at {path}: restore the file from a backup and start again; only if it is lost for good, start once with --replace-lost-key (a new key is made, and every agent and workload must get the new trust bundle)")]
    MissingKey {
        /// The key's ID.
        id: String,
        /// Where its file should be.
        path: PathBuf,
    },
    /// An operator's key operation that cannot be done now, and why.
    #[error("{0}")]
    Refused(String),
    /// The authority failed its own self-test.
    #[error("self-test failed: a probe SVID does not verify against the bundle: {0}")]
    SelfTest(String),
}

/// This replica's ID: a random name kept in `<data_dir>/replica_id`, made
/// on first start. The database records which replica holds each signing
/// key's file, so a missing file of our own is an error, not another
/// replica's key.
pub(crate) fn replica_id(data_dir: &Path) -> Result<String, AuthorityError> {
    let path = data_dir.join("replica_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) => Err(AuthorityError::Inconsistent(format!(
            "{} is empty; remove it to make a new replica ID",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, format!("{id}\n")).map_err(io_err(&path))?;
            Ok(id)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The key that signs SVIDs now, with what an SVID chain needs.
pub struct Authority {
    /// ID in the `ca_keys` table and name of the key file.
    pub id: String,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates appended after the leaf in every SVID chain: empty for a
    /// self-signed root; this intermediate (and upstream intermediates) else.
    chain_tail: Vec<CertificateDer<'static>>,
    /// The signing certificate itself.
    pub cert: CertificateDer<'static>,
    /// The signing certificate's notAfter (SVIDs never outlive it).
    pub not_after: SystemTime,
    /// Whether the signing certificate is its own root.
    pub self_signed: bool,
}

impl Authority {
    /// rcgen issuer for signing.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// What follows the leaf in an SVID chain.
    pub fn chain_tail(&self) -> &[CertificateDer<'static>] {
        &self.chain_tail
    }

    /// The authority of key `record`, from its file in `keys_dir`.
    pub fn load(record: &CaKeyRecord, keys_dir: &Path) -> Result<Authority, AuthorityError> {
        Self::from_record(record, &key_path(keys_dir, &record.id))
    }

    fn from_record(record: &CaKeyRecord, key_path: &Path) -> Result<Authority, AuthorityError> {
        let key_pem = std::fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            AuthorityError::Inconsistent(format!(
                "key file {} is not a valid key: {e}",
                key_path.display()
            ))
        })?;
        let cert = CertificateDer::from(record.cert_der.clone());
        check_key_matches(&cert, &key).map_err(|e| {
            AuthorityError::Inconsistent(format!(
                "key file {} does not match CA key {}: {e}",
                key_path.display(),
                record.id
            ))
        })?;
        let upstream_chain = if record.chain_pem.is_empty() {
            Vec::new()
        } else {
            certificates_from_pem(&record.chain_pem).map_err(|e| {
                AuthorityError::Inconsistent(format!("stored chain of CA key {}: {e}", record.id))
            })?
        };
        Self::assemble(
            record.id.clone(),
            cert,
            key,
            upstream_chain,
            record.self_signed,
            record.journal.not_after,
        )
    }

    fn assemble(
        id: String,
        cert: CertificateDer<'static>,
        key: KeyPair,
        upstream_chain: Vec<CertificateDer<'static>>,
        self_signed: bool,
        not_after: i64,
    ) -> Result<Authority, AuthorityError> {
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        let chain_tail = if self_signed {
            Vec::new()
        } else {
            std::iter::once(cert.clone())
                .chain(upstream_chain)
                .collect()
        };
        Ok(Authority {
            id,
            issuer,
            chain_tail,
            cert,
            not_after: from_unix_seconds(not_after),
            self_signed,
        })
    }

    /// Makes a new signing key for `replica` in state `status`: a
    /// self-signed root, or an intermediate signed by the configured
    /// upstream. Its certificate (or the upstream roots) enters the bundle
    /// now; its private key goes to a 0600 file.
    pub(crate) async fn create_key(
        store: &Store,
        config: &CaConfig,
        td: &TrustDomain,
        replica: &str,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<CaKeyRecord, AuthorityError> {
        let keys_dir = config.keys_dir();
        let record = if config.upstream_cert.is_some() {
            Self::create_intermediate(store, config, td, &keys_dir, replica, status, now).await?
        } else {
            Self::create_root(store, config, td, &keys_dir, replica, status, now).await?
        };
        tracing::info!(key_id = %record.id, status = record.journal.status.as_str(), self_signed = record.self_signed, not_after = record.journal.not_after, "CA signing key created and published");
        Ok(record)
    }

    async fn create_root(
        store: &Store,
        config: &CaConfig,
        td: &TrustDomain,
        keys_dir: &Path,
        replica: &str,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<CaKeyRecord, AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let not_before = now - Duration::from_secs(60);
        let not_after = now + Duration::from_secs(config.ca_ttl);
        let params = signing_params(
            &td.id(),
            &format!("Signet root CA {td}"),
            not_before,
            not_after,
        )?;
        let cert = params.self_signed(&key)?.der().clone();
        let id = key_id(&cert);
        write_private_file(&key_path(keys_dir, &id), key.serialize_pem().as_bytes())?;
        let (nb, na) = (unix_seconds(not_before), unix_seconds(not_after));
        let record = CaKeyRecord {
            id: id.clone(),
            cert_der: cert.to_vec(),
            chain_pem: String::new(),
            self_signed: true,
            replica: Some(replica.to_owned()),
            journal: KeyJournal::new(status, nb, na, unix_seconds(now)),
        };
        let roots = [(fingerprint(&cert), cert.to_vec(), na)];
        unless_recorded(
            store.insert_ca_key(&record, &roots).await,
            &key_path(keys_dir, &id),
        )?;
        Ok(record)
    }

    async fn create_intermediate(
        store: &Store,
        config: &CaConfig,
        td: &TrustDomain,
        keys_dir: &Path,
        replica: &str,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<CaKeyRecord, AuthorityError> {
        let upstream = Upstream::load(config, now)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let not_before = now - Duration::from_secs(60);
        let not_after = (now + Duration::from_secs(config.ca_ttl)).min(upstream.not_after);
        if not_after <= now + Duration::from_secs(config.max_x509_svid_ttl) {
            return Err(AuthorityError::Upstream(
                "upstream certificate expires too soon to sign an intermediate that outlives max_x509_svid_ttl".into(),
            ));
        }
        let params = signing_params(
            &td.id(),
            &format!("Signet intermediate CA {td}"),
            not_before,
            not_after,
        )?;
        let upstream_issuer = Issuer::from_ca_cert_der(&upstream.chain[0], upstream.key)?;
        let cert = params.signed_by(&key, &upstream_issuer)?.der().clone();
        let id = key_id(&cert);
        write_private_file(&key_path(keys_dir, &id), key.serialize_pem().as_bytes())?;
        // Upstream certificates that are not bundle roots travel in SVID chains.
        let between: Vec<_> = upstream
            .chain
            .iter()
            .filter(|c| !upstream.roots.contains(c))
            .cloned()
            .collect();
        let (nb, na) = (unix_seconds(not_before), unix_seconds(not_after));
        let record = CaKeyRecord {
            id: id.clone(),
            cert_der: cert.to_vec(),
            chain_pem: if between.is_empty() {
                String::new()
            } else {
                certificates_to_pem(&between)
            },
            self_signed: false,
            replica: Some(replica.to_owned()),
            journal: KeyJournal::new(status, nb, na, unix_seconds(now)),
        };
        let roots: Vec<_> = upstream
            .roots
            .iter()
            .map(|r| (fingerprint(r), r.to_vec(), cert_not_after(r).unwrap_or(na)))
            .collect();
        unless_recorded(
            store.insert_ca_key(&record, &roots).await,
            &key_path(keys_dir, &id),
        )?;
        Ok(record)
    }

    /// Signs a probe SVID and verifies it against `bundle`: proves the key,
    /// the chain and the bundle agree before the CA serves anything.
    pub fn self_test(&self, bundle: &TrustBundle, now: SystemTime) -> Result<(), AuthorityError> {
        let probe_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let id = bundle
            .trust_domain()
            .spiffe_id(signet_identity::reserved::SELF_TEST_PATH)
            .map_err(|e| AuthorityError::SelfTest(e.to_string()))?;
        let params = signet_identity::x509_svid::leaf_params(
            &id,
            &[],
            now - Duration::from_secs(10),
            (now + Duration::from_secs(60)).min(self.not_after),
        )?;
        let leaf = params.signed_by(&probe_key, &self.issuer)?.der().clone();
        let chain: Vec<_> = std::iter::once(leaf)
            .chain(self.chain_tail.iter().cloned())
            .collect();
        verify_x509_svid(&chain, bundle, now)
            .map(|_| ())
            .map_err(|e| AuthorityError::SelfTest(e.to_string()))
    }
}

/// The upstream CA material from the config files.
struct Upstream {
    /// Upstream signing certificate first, then whatever chain the file had.
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
    roots: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl Upstream {
    fn load(config: &CaConfig, now: SystemTime) -> Result<Self, AuthorityError> {
        let (Some(cert_path), Some(key_path)) = (&config.upstream_cert, &config.upstream_key)
        else {
            return Err(AuthorityError::Upstream(
                "upstream_cert and upstream_key are both required".into(),
            ));
        };
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(io_err(p));
        let chain = certificates_from_pem(&read(cert_path)?)
            .map_err(|e| AuthorityError::Upstream(format!("{}: {e}", cert_path.display())))?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| {
            AuthorityError::Upstream(format!(
                "{}: not a usable private key ({e}); it must be PKCS#8 PEM (convert with `openssl pkcs8 -topk8 -nocrypt`)",
                key_path.display()
            ))
        })?;
        check_key_matches(&chain[0], &key).map_err(|e| {
            AuthorityError::Upstream(format!(
                "{} does not match {}: {e}",
                key_path.display(),
                cert_path.display()
            ))
        })?;
        let (_, upstream_cert) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| AuthorityError::Upstream(format!("{}: {e}", cert_path.display())))?;
        // The SPIFFE-ID-path rule is about SVID signing certs; an upstream PKI
        // cert is still required to be a valid, current CA with keyCertSign.
        let problems: Vec<String> = signing_violations(&upstream_cert, now)
            .into_iter()
            .filter(|v| !matches!(v, signet_identity::Violation::SigningCertIdHasPath(_)))
            .map(|v| v.to_string())
            .collect();
        if !problems.is_empty() {
            return Err(AuthorityError::Upstream(format!(
                "{} cannot sign a CA: {}",
                cert_path.display(),
                problems.join("; ")
            )));
        }
        let not_after = from_unix_seconds(upstream_cert.validity().not_after.timestamp());
        let roots = match &config.upstream_bundle {
            Some(p) => certificates_from_pem(&read(p)?)
                .map_err(|e| AuthorityError::Upstream(format!("{}: {e}", p.display())))?,
            None => {
                let last = chain
                    .last()
                    .cloned()
                    .ok_or_else(|| AuthorityError::Upstream("empty chain".into()))?;
                let self_signed = x509_parser::parse_x509_certificate(&last)
                    .map(|(_, c)| c.subject() == c.issuer())
                    .unwrap_or(false);
                if !self_signed {
                    return Err(AuthorityError::Upstream(format!(
                        "{} does not end with a self-signed root; set upstream_bundle to the upstream roots",
                        cert_path.display()
                    )));
                }
                vec![last]
            }
        };
        Ok(Self {
            chain,
            key,
            roots,
            not_after,
        })
    }
}

/// Where the private key of CA key `id` lives.
pub(crate) fn key_path(keys_dir: &Path, id: &str) -> PathBuf {
    keys_dir.join(format!("{id}.pem"))
}

/// Before rotation looks at this replica's keys: adopts keys made before
/// replicas were recorded whose file is here; stops on a missing file of
/// an active or prepared key of ours (or, with `--replace-lost-key`, marks
/// it lost); retires keys of the other mode (self-signed vs upstream).
pub(crate) async fn reconcile(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: SystemTime,
) -> Result<(), AuthorityError> {
    let keys_dir = config.keys_dir();
    let upstream = config.upstream_cert.is_some();
    let now = unix_seconds(now);
    for record in store.ca_keys(now).await? {
        if !matches!(
            record.journal.status,
            KeyStatus::Active | KeyStatus::Prepared
        ) {
            continue;
        }
        let path = key_path(&keys_dir, &record.id);
        let file_here = path.exists();
        match record.replica.as_deref() {
            Some(owner) if owner != replica => continue, // another replica's key
            None if !file_here => continue,              // unrecorded, and not ours
            None => store.set_ca_key_replica(&record.id, replica).await?,
            Some(_) if !file_here && config.replace_lost_key => {
                store
                    .set_key_status(
                        KeyTable::X509,
                        &record.id,
                        record.journal.status,
                        KeyStatus::Lost,
                        now,
                    )
                    .await?;
                tracing::warn!(key_id = %record.id, path = %path.display(), "signing key file is missing: key marked lost as asked (--replace-lost-key); a new key will be made");
                continue;
            }
            Some(_) if !file_here => {
                return Err(AuthorityError::MissingKey {
                    id: record.id,
                    path,
                })
            }
            Some(_) => {}
        }
        if record.self_signed == upstream {
            store
                .set_key_status(
                    KeyTable::X509,
                    &record.id,
                    record.journal.status,
                    KeyStatus::Old,
                    now,
                )
                .await?;
            tracing::info!(key_id = %record.id, "signing key of the other mode (self-signed vs upstream) retired; it stays in the bundle until it expires");
        }
    }
    Ok(())
}

/// Refuses to serve a database that belongs to another trust domain.
pub(crate) async fn check_trust_domain(
    store: &Store,
    td: &TrustDomain,
) -> Result<(), AuthorityError> {
    match store.setting("trust_domain").await? {
        Some(existing) if existing != td.as_str() => Err(AuthorityError::Inconsistent(format!(
            "the database belongs to trust domain {existing:?}, not {:?}; use its own data dir/database or the same --trust-domain",
            td.as_str()
        ))),
        Some(_) => Ok(()),
        None => Ok(store.set_setting("trust_domain", td.as_str()).await?),
    }
}

fn check_key_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("public keys differ".into());
    }
    Ok(())
}

fn cert_not_after(der: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// SHA-256 of a certificate's DER, hex.
pub(crate) fn fingerprint(der: &CertificateDer<'_>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

fn key_id(cert: &CertificateDer<'_>) -> String {
    fingerprint(cert)[..32].to_owned()
}

/// Creates `dir` (and parents) and makes it owner-only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), AuthorityError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// A new key's file is removed when the database refused the key (another
/// was prepared at the same moment): no private key is left behind
/// without a record.
pub(crate) fn unless_recorded(
    inserted: Result<(), StoreError>,
    key_file: &Path,
) -> Result<(), AuthorityError> {
    inserted.map_err(|e| {
        let _ = std::fs::remove_file(key_file);
        AuthorityError::from(e)
    })
}

/// `prepare`'s refusal when the database turned the key down because
/// another was prepared on this replica between the check and the insert.
pub(crate) fn prepared_meanwhile(e: AuthorityError) -> AuthorityError {
    match e {
        AuthorityError::Store(StoreError::AlreadyExists(what)) => AuthorityError::Refused(format!(
            "{what} is already there: another prepare ran at the same moment; check `signet ca show` and activate that key with `signet ca activate`"
        )),
        e => e,
    }
}

/// Writes a secret file atomically with mode 0600 from the first byte.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), AuthorityError> {
    signet_identity::files::write_atomically(path, contents, signet_identity::files::SECRET_MODE)
        .map_err(io_err(path))
}
