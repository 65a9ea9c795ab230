//! What the CA and the agent must agree on to attest a node by proof of
//! possession (x509pop, sshpop): the method names, the challenge, and the
//! message the node signs.

/// The join-token method's name (in agent records, selectors, logs).
pub const JOIN_TOKEN: &str = "join_token";
/// The x509pop method's name.
pub const X509POP: &str = "x509pop";
/// The sshpop method's name.
pub const SSHPOP: &str = "sshpop";

/// The SSHSIG namespace of an sshpop node's answer (OpenSSH signatures
/// name what they are for, so one made here is good for nothing else).
pub const SSHPOP_NAMESPACE: &str = "signet-node-attestation";

/// Length of the CA's challenge nonce.
pub const NONCE_LEN: usize = 32;

/// What a node signs to answer a challenge: a fixed context, the method,
/// the nonce and the SHA-256 of the CSR it attests with. The proof is good
/// for this stream (the nonce is fresh) and this key (the CSR) only: an
/// answer recorded from another stream, or replayed with another CSR, does
/// not verify.
pub fn challenge_message(method: &str, nonce: &[u8], csr_der: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"signet node attestation v1\0";
    let csr_hash = ring::digest::digest(&ring::digest::SHA256, csr_der);
    let mut m = Vec::with_capacity(CONTEXT.len() + method.len() + 1 + nonce.len() + 32);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m.extend_from_slice(csr_hash.as_ref());
    m
}

/// The signature schemes an x509pop node may answer with (TLS code
/// points), strongest of each key type first: what the agent picks from
/// for its key, and all the CA accepts.
pub const X509POP_SCHEMES: &[rustls::SignatureScheme] = &[
    rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    rustls::SignatureScheme::ED25519,
    rustls::SignatureScheme::RSA_PSS_SHA256,
    rustls::SignatureScheme::RSA_PKCS1_SHA256,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_binds_method_nonce_and_csr() {
        let m = challenge_message(X509POP, &[1; NONCE_LEN], b"csr");
        assert!(m.starts_with(b"signet node attestation v1\0x509pop\0"));
        assert_ne!(m, challenge_message(SSHPOP, &[1; NONCE_LEN], b"csr"));
        assert_ne!(m, challenge_message(X509POP, &[2; NONCE_LEN], b"csr"));
        assert_ne!(m, challenge_message(X509POP, &[1; NONCE_LEN], b"other csr"));
    }
}
