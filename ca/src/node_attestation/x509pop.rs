//! x509pop: a node proves possession of the key of a certificate issued by
//! a CA the Signet CA trusts for nodes (`[node_attestation.x509pop]
//! ca_bundle`), as SPIRE's x509pop attestor does.
//!
//! The chain is verified first (against the configured roots, validity
//! now, the client-auth EKU when the leaf has an EKU extension, path
//! length), then the node signs the CA's nonce with the leaf's key.
//!
//! - Agent ID: `spiffe://<td>/signet/agent/x509pop/<SHA-1 of the leaf, hex>`,
//!   or the path `agent_path_template` makes (fields `.PluginName`,
//!   `.Fingerprint`, `.Subject.CommonName`, `.SerialNumberHex`).
//! - Selectors: `x509pop:subject:cn:<CN>`, `x509pop:ca:fingerprint:<SHA-1>`
//!   of each certificate above the leaf on the verified path (root
//!   included), `x509pop:san:dns:<name>`, `x509pop:san:uri:<uri>`,
//!   `x509pop:serialnumber:<hex>`.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use signet_identity::node_attestation::{X509POP, X509POP_SCHEMES};
use signet_identity::reserved::AGENT_PATH_PREFIX;
use signet_identity::TrustDomain;
use x509_parser::extensions::GeneralName;

use super::path_template::PathTemplate;
use super::AttestedNode;
use crate::ca::AgentRefused;

/// Most certificates a node may present (leaf and intermediates).
pub(crate) const MAX_CHAIN: usize = 8;

/// The default `agent_path_template`: the stable path of the contract.
pub(crate) const DEFAULT_TEMPLATE: &str = "{{ .PluginName }}/{{ .Fingerprint }}";

/// The fields a template may use.
const FIELDS: &[&str] = &[
    "PluginName",
    "Fingerprint",
    "Subject.CommonName",
    "SerialNumberHex",
];

/// The CA side of x509pop: the roots trusted for nodes and the path
/// template.
pub(crate) struct X509PopAttestor {
    /// Each root as a trust anchor, with the SHA-1 of its certificate.
    roots: Vec<(rustls_pki_types::TrustAnchor<'static>, String)>,
    template: PathTemplate,
}

/// Why the x509pop configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum X509PopConfigError {
    /// The bundle file is unreadable.
    #[error("node_attestation.x509pop.ca_bundle {path}: {reason}")]
    Bundle {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The template is unusable.
    #[error(transparent)]
    Template(#[from] super::path_template::TemplateError),
}

impl X509PopAttestor {
    /// Reads the roots from `ca_bundle` (PEM) and parses the template.
    pub(crate) fn load(
        ca_bundle: &Path,
        template: Option<&str>,
    ) -> Result<Self, X509PopConfigError> {
        let bad = |reason: String| X509PopConfigError::Bundle {
            path: ca_bundle.display().to_string(),
            reason,
        };
        let text =
            signet_identity::files::read_input_file(ca_bundle).map_err(|e| bad(e.to_string()))?;
        let certs =
            signet_identity::certificates_from_pem(&text).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE in it".into()));
        }
        let mut roots = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| bad(format!("certificate {i}: {e}")))?
                .to_owned();
            roots.push((anchor, sha1_hex(der)));
        }
        let template = PathTemplate::parse(template.unwrap_or(DEFAULT_TEMPLATE), FIELDS)?;
        Ok(Self { roots, template })
    }

    /// Verifies a node's chain (DER, leaf first) at `now`; the node it
    /// names and the leaf whose key must answer the challenge.
    pub(crate) fn verify_chain(
        &self,
        td: &TrustDomain,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<(AttestedNode, CertificateDer<'static>), AgentRefused> {
        let bad = |detail: String| AgentRefused::BadEvidence {
            method: X509POP,
            detail,
        };
        let Some(leaf_der) = chain.first() else {
            return Err(bad(
                "no certificate: send the node's certificate, leaf first".into(),
            ));
        };
        if chain.len() > MAX_CHAIN {
            return Err(bad(format!(
                "{} certificates; at most {MAX_CHAIN} (the leaf and its intermediates)",
                chain.len()
            )));
        }
        let leaf = CertificateDer::from(leaf_der.clone()).into_owned();
        let intermediates: Vec<CertificateDer<'static>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| bad(format!("the leaf certificate does not parse: {e}")))?;
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| bad("the CA's clock is before 1970".into()))?;
        let anchors: Vec<rustls_pki_types::TrustAnchor<'_>> =
            self.roots.iter().map(|(a, _)| a.clone()).collect();
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                UnixTime::since_unix_epoch(since_epoch),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(chain_refused)?;
        let mut above_leaf: Vec<String> = path
            .intermediate_certificates()
            .map(|c| sha1_hex(c.der().as_ref()))
            .collect();
        let anchor = path.anchor();
        if let Some((_, fp)) = self.roots.iter().find(|(a, _)| {
            a.subject_public_key_info == anchor.subject_public_key_info
                && a.subject == anchor.subject
        }) {
            above_leaf.push(fp.clone());
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| bad(format!("the leaf certificate does not parse: {e}")))?;
        let fingerprint = sha1_hex(&leaf);
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let serial = parsed
            .tbs_certificate
            .raw_serial_as_string()
            .replace(':', "");
        let mut selectors = Vec::new();
        if let Some(cn) = &common_name {
            selectors.push(format!("{X509POP}:subject:cn:{cn}"));
        }
        for fp in &above_leaf {
            selectors.push(format!("{X509POP}:ca:fingerprint:{fp}"));
        }
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => selectors.push(format!("{X509POP}:san:dns:{d}")),
                    GeneralName::URI(u) => selectors.push(format!("{X509POP}:san:uri:{u}")),
                    _ => {}
                }
            }
        }
        selectors.push(format!("{X509POP}:serialnumber:{serial}"));
        selectors.sort();
        selectors.dedup();
        let path = self.template.render(|field| match field {
            "PluginName" => Some(X509POP.to_owned()),
            "Fingerprint" => Some(fingerprint.clone()),
            "Subject.CommonName" => common_name.clone(),
            "SerialNumberHex" => Some(serial.clone()),
            _ => None,
        });
        let agent_id = td
            .spiffe_id(&format!("{AGENT_PATH_PREFIX}/{path}"))
            .map_err(|e| AgentRefused::NotProven {
                method: X509POP,
                reason: "x509pop_bad_agent_path",
                detail: format!(
                    "agent_path_template made {AGENT_PATH_PREFIX}/{path}, not a valid agent ID path ({e}); fix the template or the certificate"
                ),
            })?;
        Ok((
            AttestedNode {
                agent_id,
                method: X509POP,
                selectors,
            },
            leaf,
        ))
    }
}

/// The refusal for a chain webpki did not verify, by what it found.
fn chain_refused(e: webpki::Error) -> AgentRefused {
    use webpki::Error as E;
    let (reason, detail) = match &e {
        E::UnknownIssuer => (
            "x509pop_untrusted",
            "the certificate does not chain to a CA trusted for nodes (node_attestation.x509pop.ca_bundle)".to_owned(),
        ),
        E::CertExpired { .. } => ("x509pop_expired", "the certificate has expired".to_owned()),
        E::CertNotValidYet { .. } => (
            "x509pop_not_yet_valid",
            "the certificate is not valid yet".to_owned(),
        ),
        E::RequiredEkuNotFoundContext(_) => (
            "x509pop_wrong_eku",
            "the certificate's extended key usage does not allow client authentication".to_owned(),
        ),
        E::PathLenConstraintViolated | E::MaximumPathDepthExceeded => (
            "x509pop_path_too_long",
            "the chain is longer than its CAs allow".to_owned(),
        ),
        E::CaUsedAsEndEntity => (
            "x509pop_ca_as_leaf",
            "the leaf is a CA certificate".to_owned(),
        ),
        other => ("x509pop_invalid", format!("the chain does not verify: {other}")),
    };
    AgentRefused::NotProven {
        method: X509POP,
        reason,
        detail,
    }
}

/// Checks the node's answer: `signature` (TLS scheme `scheme`) over
/// `message` with the key of `leaf`.
pub(crate) fn verify_proof(
    leaf: &CertificateDer<'_>,
    scheme: u32,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AgentRefused> {
    let refused = |reason: &'static str, detail: String| AgentRefused::NotProven {
        method: X509POP,
        reason,
        detail,
    };
    let scheme = u16::try_from(scheme)
        .map(rustls::SignatureScheme::from)
        .ok()
        .filter(|s| X509POP_SCHEMES.contains(s))
        .ok_or_else(|| {
            refused(
                "x509pop_bad_scheme",
                format!("signature scheme {scheme:#06x} is not accepted; use one of {X509POP_SCHEMES:?}"),
            )
        })?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| refused("x509pop_invalid", format!("the leaf does not parse: {e}")))?;
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, algs)| *algs)
        .unwrap_or(&[]);
    if algorithms
        .iter()
        .any(|alg| ee.verify_signature(*alg, message, signature).is_ok())
    {
        return Ok(());
    }
    Err(refused(
        "x509pop_bad_signature",
        "the answer is not a signature over this stream's challenge with the certificate's key (a replayed answer, or a key that does not match the certificate)".into(),
    ))
}

fn sha1_hex(der: &[u8]) -> String {
    crate::registry::join_token::hex(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
    )
}
