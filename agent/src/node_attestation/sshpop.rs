//! sshpop on the node: the OpenSSH host certificate from `sshpop_cert`,
//! the host key from `sshpop_key` (OpenSSH format, unencrypted, as sshd
//! keeps it), and an SSHSIG over the CA's challenge.

use std::path::{Path, PathBuf};

use signet_identity::node_attestation::SSHPOP_NAMESPACE;
use signet_proto::node as pb;
use ssh_key::{Certificate, HashAlg, LineEnding, PrivateKey};

use crate::run::AgentError;

/// The host key kinds tried for the default paths, in order.
const HOST_KEY_KINDS: &[&str] = &["ed25519", "ecdsa", "rsa"];

/// The node's host certificate and key.
pub(crate) struct SshPopNode {
    certificate: String,
    key: PrivateKey,
}

/// The default paths: the first `/etc/ssh/ssh_host_<kind>_key-cert.pub`
/// that exists, with its key.
pub(crate) fn default_paths() -> Option<(PathBuf, PathBuf)> {
    HOST_KEY_KINDS.iter().find_map(|kind| {
        let key = PathBuf::from(format!("/etc/ssh/ssh_host_{kind}_key"));
        let cert = PathBuf::from(format!("/etc/ssh/ssh_host_{kind}_key-cert.pub"));
        cert.exists().then_some((cert, key))
    })
}

/// The key beside certificate `cert` (`…_key-cert.pub` → `…_key`).
pub(crate) fn key_beside(cert: &Path) -> PathBuf {
    let s = cert.to_string_lossy();
    PathBuf::from(s.strip_suffix("-cert.pub").unwrap_or(&s).to_owned())
}

/// The certificate beside key `key` (`…_key` → `…_key-cert.pub`).
pub(crate) fn cert_beside(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

impl SshPopNode {
    /// Reads the certificate and the host key, and checks that they go
    /// together.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, AgentError> {
        let cert_err = |e: String| AgentError::Io(format!("--sshpop-cert {}: {e}", cert.display()));
        let text =
            signet_identity::files::read_input_file(cert).map_err(|e| cert_err(e.to_string()))?;
        let certificate = text.trim().to_owned();
        let parsed = Certificate::from_openssh(&certificate)
            .map_err(|e| cert_err(format!("not an OpenSSH certificate: {e}")))?;
        let key_err = |e: String| AgentError::Io(format!("--sshpop-key {}: {e}", key.display()));
        let private = PrivateKey::read_openssh_file(key)
            .map_err(|e| key_err(format!("not an OpenSSH private key: {e}")))?;
        if private.is_encrypted() {
            return Err(key_err(
                "the key is encrypted; sshpop needs the host key as sshd keeps it".into(),
            ));
        }
        if private.public_key().key_data() != parsed.public_key() {
            return Err(key_err(format!(
                "it is not the key {} certifies",
                cert.display()
            )));
        }
        Ok(Self {
            certificate,
            key: private,
        })
    }

    /// The certificate as sent.
    pub(crate) fn certificate(&self) -> &str {
        &self.certificate
    }

    /// Signs `message` (SSHSIG, PEM) with the host key.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<pb::ChallengeResponse, AgentError> {
        let sig = self
            .key
            .sign(SSHPOP_NAMESPACE, HashAlg::Sha512, message)
            .map_err(|e| AgentError::Attestation(format!("signing the challenge: {e}")))?;
        let pem = sig
            .to_pem(LineEnding::LF)
            .map_err(|e| AgentError::Attestation(format!("encoding the signature: {e}")))?;
        Ok(pb::ChallengeResponse {
            signature: pem.into_bytes(),
            scheme: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_and_the_certificate_sit_side_by_side() {
        let cert = Path::new("/etc/ssh/ssh_host_ed25519_key-cert.pub");
        assert_eq!(key_beside(cert), Path::new("/etc/ssh/ssh_host_ed25519_key"));
        assert_eq!(cert_beside(&key_beside(cert)), cert);
    }
}

#[cfg(test)]
mod keygen_tests {
    use super::*;

    fn keygen(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("ssh-keygen")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn an_ssh_keygen_host_key_signs_the_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(d, &["-q", "-t", "ed25519", "-N", "", "-f", "ca"]);
        for kind in ["ed25519", "ecdsa", "rsa"] {
            let key = format!("h_{kind}");
            keygen(d, &["-q", "-t", kind, "-N", "", "-f", &key]);
            keygen(
                d,
                &[
                    "-q",
                    "-s",
                    "ca",
                    "-I",
                    "h",
                    "-h",
                    "-n",
                    "h.example.com",
                    "-V",
                    "-5m:+1h",
                    &format!("{key}.pub"),
                ],
            );
            let node = SshPopNode::load(&d.join(format!("{key}-cert.pub")), &d.join(&key)).unwrap();
            let r = node.sign(b"challenge");
            assert!(r.is_ok(), "{kind}: {:?}", r.err());
        }
    }
}
