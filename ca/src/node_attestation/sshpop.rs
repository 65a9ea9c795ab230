//! sshpop: a node proves possession of an SSH host key certified by an SSH
//! certificate authority the Signet CA trusts (`[node_attestation.sshpop]
//! cert_authorities`), as SPIRE's sshpop attestor does. The certificate is
//! checked first (a host certificate, valid now, with principals, signed by
//! one of the configured CA keys), then the node signs the CA's nonce with
//! the host key (an SSHSIG in namespace `signet-node-attestation`).
//!
//! - Agent ID: `spiffe://<td>/signet/agent/sshpop/<SHA-256 of the host key, hex>`.
//! - Selectors: `sshpop:principal:<p>` for each principal,
//!   `sshpop:ca:fingerprint:<SHA-256 of the CA key, hex>`.

use std::path::Path;
use std::time::SystemTime;

use signet_identity::node_attestation::{SSHPOP, SSHPOP_NAMESPACE};
use signet_identity::reserved::AGENT_PATH_PREFIX;
use signet_identity::TrustDomain;
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, Fingerprint, HashAlg, PublicKey, SshSig};

use super::AttestedNode;
use crate::ca::AgentRefused;

/// Longest certificate text a node may send (an RSA-8192 host key's
/// certificate is under 4 KiB).
pub(crate) const MAX_CERTIFICATE: usize = 8 * 1024;

/// The CA side of sshpop: the SSH certificate authorities trusted for
/// host certificates.
pub(crate) struct SshPopAttestor {
    authorities: Vec<Fingerprint>,
}

/// Why the sshpop configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("node_attestation.sshpop: {0}")]
pub(crate) struct SshPopConfigError(String);

impl SshPopAttestor {
    /// The authorities: `keys` (OpenSSH public key lines) and those in
    /// `file` (one per line; `#` comments and blank lines skipped).
    pub(crate) fn load(keys: &[String], file: Option<&Path>) -> Result<Self, SshPopConfigError> {
        let mut lines: Vec<(String, String)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("cert_authorities[{i}]"), k.clone()))
            .collect();
        if let Some(path) = file {
            let text = signet_identity::files::read_input_file(path).map_err(|e| {
                SshPopConfigError(format!("cert_authorities_file {}: {e}", path.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    lines.push((format!("{}:{}", path.display(), n + 1), line.to_owned()));
                }
            }
        }
        if lines.is_empty() {
            return Err(SshPopConfigError(
                "no certificate authority: set cert_authorities = [\"ssh-ed25519 AAAA…\"] or cert_authorities_file".into(),
            ));
        }
        let mut authorities = Vec::with_capacity(lines.len());
        for (where_, line) in lines {
            let key = PublicKey::from_openssh(&line).map_err(|e| {
                SshPopConfigError(format!("{where_}: not an OpenSSH public key: {e}"))
            })?;
            authorities.push(key.fingerprint(HashAlg::Sha256));
        }
        Ok(Self { authorities })
    }

    /// Checks a node's host certificate at `now`: the node it names and
    /// the host key that must answer the challenge.
    pub(crate) fn verify_certificate(
        &self,
        td: &TrustDomain,
        certificate: &str,
        now: SystemTime,
    ) -> Result<(AttestedNode, PublicKey), AgentRefused> {
        let bad = |detail: String| AgentRefused::BadEvidence {
            method: SSHPOP,
            detail,
        };
        let refused = |reason: &'static str, detail: String| AgentRefused::NotProven {
            method: SSHPOP,
            reason,
            detail,
        };
        if certificate.len() > MAX_CERTIFICATE {
            return Err(bad(format!(
                "the certificate is over {MAX_CERTIFICATE} bytes"
            )));
        }
        let cert = Certificate::from_openssh(certificate.trim())
            .map_err(|e| bad(format!("not an OpenSSH certificate: {e}")))?;
        if cert.cert_type() != CertType::Host {
            return Err(refused(
                "sshpop_not_host",
                "the certificate is a user certificate; a host certificate is needed (ssh-keygen -h)".into(),
            ));
        }
        if cert.valid_principals().is_empty() {
            return Err(refused(
                "sshpop_no_principal",
                "the certificate names no principal (ssh-keygen -n host.example.com)".into(),
            ));
        }
        let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
        if !self.authorities.contains(&ca) {
            return Err(refused(
                "sshpop_untrusted",
                format!("the certificate is signed by {ca}, not a certificate authority trusted for nodes (node_attestation.sshpop)"),
            ));
        }
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now_s >= cert.valid_before() {
            return Err(refused(
                "sshpop_expired",
                "the certificate has expired".into(),
            ));
        }
        if now_s < cert.valid_after() {
            return Err(refused(
                "sshpop_not_yet_valid",
                "the certificate is not valid yet".into(),
            ));
        }
        // Signature by that CA (and validity, checked again).
        cert.validate_at(now_s, [&ca]).map_err(|e| {
            refused(
                "sshpop_invalid",
                format!("the certificate's signature does not verify: {e}"),
            )
        })?;
        let host_key = PublicKey::from(cert.public_key().clone());
        let host_fp = hex(host_key.fingerprint(HashAlg::Sha256).as_bytes());
        let agent_id = td
            .spiffe_id(&format!("{AGENT_PATH_PREFIX}/{SSHPOP}/{host_fp}"))
            .map_err(|e| bad(format!("agent ID: {e}")))?;
        let mut selectors: Vec<String> = cert
            .valid_principals()
            .iter()
            .map(|p| format!("{SSHPOP}:principal:{p}"))
            .collect();
        selectors.push(format!("{SSHPOP}:ca:fingerprint:{}", hex(ca.as_bytes())));
        selectors.sort();
        selectors.dedup();
        Ok((
            AttestedNode {
                agent_id,
                method: SSHPOP,
                selectors,
            },
            host_key,
        ))
    }
}

/// Checks the node's answer: an SSHSIG (PEM) over `message` by `host_key`.
pub(crate) fn verify_proof(
    host_key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AgentRefused> {
    let refused = |detail: String| AgentRefused::NotProven {
        method: SSHPOP,
        reason: "sshpop_bad_signature",
        detail,
    };
    let sig = SshSig::from_pem(signature)
        .map_err(|e| refused(format!("the answer is not an SSH signature: {e}")))?;
    host_key.verify(SSHPOP_NAMESPACE, message, &sig).map_err(|_| {
        refused("the answer is not a signature over this stream's challenge with the certificate's host key (a replayed answer, or another key)".into())
    })
}

fn hex(bytes: &[u8]) -> String {
    crate::registry::join_token::hex(bytes)
}
