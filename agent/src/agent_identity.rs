//! The agent's own identity: its SVID and key, kept in the data dir (key
//! 0600) so that a restart needs no new join token, and the trust bundle it
//! last received.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::CertificateDer;
use signet_identity::jwt_svid::JwtAuthority;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{
    certificates_from_pem, certificates_to_pem, SpiffeId, TrustBundle, TrustDomain,
};
use signet_proto::node as pb;

use crate::node_client::ClientCert;

const SVID_FILE: &str = "agent_svid.pem";
const KEY_FILE: &str = "agent_key.pem";
const BUNDLE_FILE: &str = "bundle.pem";
/// The whole bundle, JWT authorities included, as a SPIFFE bundle (JWKS).
const BUNDLE_JWKS_FILE: &str = "bundle.json";

/// Why the agent's identity could not be loaded, stored or obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File system problem.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Stored or received material does not parse.
    #[error("{0}")]
    Invalid(String),
    /// Key or CSR generation failed.
    #[error("key generation: {0}")]
    Key(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The agent's SVID with its key.
#[derive(Clone)]
pub struct AgentSvid {
    /// The agent's SPIFFE ID.
    pub id: SpiffeId,
    /// Certificate chain and key, as used for mTLS to the CA.
    pub cert: ClientCert,
    /// When it was received (or, loaded from disk, its notBefore), Unix
    /// seconds; renewal is timed from here.
    pub issued_at: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl AgentSvid {
    /// Whether the SVID is still valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        unix_seconds(now) < self.not_after
    }
}

/// A fresh P-256 key and a CSR for it (the CA takes only the key).
pub fn new_key_and_csr() -> Result<(KeyPair, Vec<u8>), IdentityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)?
        .der()
        .to_vec();
    Ok((key, csr))
}

fn validity(chain: &[CertificateDer<'_>]) -> Result<(SpiffeId, i64, i64), IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::Invalid("empty certificate chain".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| IdentityError::Invalid(format!("agent SVID: {e}")))?;
    let id = signet_identity::x509_svid::leaf_spiffe_id(&cert)
        .map_err(|e| IdentityError::Invalid(format!("agent SVID: {e}")))?;
    Ok((
        id,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Builds an [`AgentSvid`] from the CA's answer and the key we generated.
/// `now` is when it arrived (renewal is timed from it).
pub fn from_response(
    resp: &pb::AgentSvid,
    key: &KeyPair,
    now: SystemTime,
) -> Result<(AgentSvid, TrustBundle), IdentityError> {
    let chain: Vec<CertificateDer<'static>> = resp
        .cert_chain
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let (id, not_before, not_after) = validity(&chain)?;
    let bundle = bundle_from_pb(resp.bundle.as_ref())?;
    Ok((
        AgentSvid {
            id,
            cert: ClientCert {
                chain,
                key_pkcs8: key.serialize_der(),
            },
            issued_at: unix_seconds(now).max(not_before),
            not_after,
        },
        bundle,
    ))
}

/// A bundle from its protobuf form.
pub fn bundle_from_pb(b: Option<&pb::Bundle>) -> Result<TrustBundle, IdentityError> {
    let b = b.ok_or_else(|| IdentityError::Invalid("the CA sent no bundle".into()))?;
    let td =
        TrustDomain::new(&b.trust_domain).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let bundle = TrustBundle::new(
        td,
        b.x509_authorities
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect(),
    )
    .map_err(|e| IdentityError::Invalid(format!("bundle: {e}")))?;
    let jwt_authorities = b
        .jwt_authorities
        .iter()
        .map(|a| JwtAuthority::from_spki_der(&a.kid, &a.public_key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Invalid(format!("bundle: {e}")))?;
    let mut bundle = bundle.with_jwt_authorities(jwt_authorities);
    bundle.sequence = b.sequence;
    Ok(bundle)
}

/// Writes `contents` atomically; `secret` files get mode 0600 from the start.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), IdentityError> {
    use signet_identity::files::{write_atomically, PUBLIC_MODE, SECRET_MODE};
    write_atomically(
        path,
        contents,
        if secret { SECRET_MODE } else { PUBLIC_MODE },
    )
    .map_err(io(path))
}

/// Creates the data dir, owner-only.
pub fn prepare_data_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Saves the agent SVID, key and bundle.
pub fn save(dir: &Path, svid: &AgentSvid, bundle: &TrustBundle) -> Result<(), IdentityError> {
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", svid.cert.key_pkcs8.clone()));
    write_file(&dir.join(KEY_FILE), key_pem.as_bytes(), true)?;
    write_file(
        &dir.join(SVID_FILE),
        certificates_to_pem(&svid.cert.chain).as_bytes(),
        false,
    )?;
    save_bundle(dir, bundle)
}

/// Saves the bundle alone (on bundle updates).
pub fn save_bundle(dir: &Path, bundle: &TrustBundle) -> Result<(), IdentityError> {
    let jwks = bundle
        .to_jwks()
        .map_err(|e| IdentityError::Invalid(format!("bundle: {e}")))?;
    write_file(&dir.join(BUNDLE_JWKS_FILE), jwks.as_bytes(), false)?;
    write_file(&dir.join(BUNDLE_FILE), bundle.to_pem().as_bytes(), false)
}

/// Loads a previously saved identity, if the files are there.
pub fn load(
    dir: &Path,
    td: &TrustDomain,
) -> Result<Option<(AgentSvid, TrustBundle)>, IdentityError> {
    let (svid_path, key_path, bundle_path) = (
        dir.join(SVID_FILE),
        dir.join(KEY_FILE),
        dir.join(BUNDLE_FILE),
    );
    if !svid_path.exists() || !key_path.exists() || !bundle_path.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
    let chain = certificates_from_pem(&read(&svid_path)?)
        .map_err(|e| IdentityError::Invalid(format!("{}: {e}", svid_path.display())))?;
    let key_pem = read(&key_path)?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| IdentityError::Invalid(format!("{}: {e}", key_path.display())))?;
    // The JWKS form has the JWT authorities too; agents from before JWT
    // support only wrote the PEM.
    let jwks_path = dir.join(BUNDLE_JWKS_FILE);
    let bundle = if jwks_path.exists() {
        TrustBundle::from_jwks(td.clone(), &read(&jwks_path)?)
            .map_err(|e| IdentityError::Invalid(format!("{}: {e}", jwks_path.display())))?
    } else {
        TrustBundle::from_pem(td.clone(), &read(&bundle_path)?)
            .map_err(|e| IdentityError::Invalid(format!("{}: {e}", bundle_path.display())))?
    };
    let (id, not_before, not_after) = validity(&chain)?;
    if id.trust_domain_name() != td.as_str() {
        return Err(IdentityError::Invalid(format!(
            "the stored agent SVID is for {id}, not trust domain {td}; use another data dir"
        )));
    }
    Ok(Some((
        AgentSvid {
            id,
            cert: ClientCert {
                chain,
                key_pkcs8: key.serialize_der(),
            },
            issued_at: not_before,
            not_after,
        },
        bundle,
    )))
}
