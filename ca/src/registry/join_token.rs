//! Join tokens: random single-use secrets an operator hands to a new node.
//! Only a SHA-256 hash is stored, so a database leak does not leak tokens
//! (they carry 256 bits of randomness, so a fast hash suffices).

use ring::rand::{SecureRandom, SystemRandom};
use signet_identity::{SpiffeId, TrustDomain};

use crate::registry::entry::AGENT_PATH_PREFIX;

/// Longest a join token may live, seconds (30 days).
pub const MAX_TTL: i64 = 30 * 86400;

/// Number of random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// Why a join token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The node name cannot be a SPIFFE ID path segment.
    #[error("invalid node name {name:?}: {reason}")]
    BadNodeName {
        /// What was given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The OS random number generator failed.
    #[error("random number generator failed")]
    Random,
}

/// A freshly minted token; `token` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    /// The secret.
    pub token: String,
    /// The SPIFFE ID the agent attesting with it will get.
    pub agent_id: SpiffeId,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A new random token: 64 lowercase hex digits.
pub fn generate() -> Result<String, JoinTokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| JoinTokenError::Random)?;
    Ok(hex(&bytes))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The agent ID a token grants: `/signet/agent/<node_name>` when a node name
/// is given, else `/signet/agent/join_token/<first 16 hex of the token's hash>`
/// (never the secret itself, which would then show up in IDs and logs).
pub fn agent_id(
    td: &TrustDomain,
    node_name: Option<&str>,
    token: &str,
) -> Result<SpiffeId, JoinTokenError> {
    let path = match node_name {
        Some(name) => {
            if name.is_empty() || name.contains('/') {
                return Err(JoinTokenError::BadNodeName {
                    name: name.to_owned(),
                    reason: "must be one path segment (letters, digits, '.', '-', '_')".into(),
                });
            }
            format!("{AGENT_PATH_PREFIX}/{name}")
        }
        None => format!("{AGENT_PATH_PREFIX}/join_token/{}", &hash(token)[..16]),
    };
    td.spiffe_id(&path)
        .map_err(|e| JoinTokenError::BadNodeName {
            name: node_name.unwrap_or_default().to_owned(),
            reason: e.to_string(),
        })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), a);
    }

    #[test]
    fn agent_ids_never_contain_the_secret() {
        let td = TrustDomain::new("example.org").unwrap();
        let t = generate().unwrap();
        let id = agent_id(&td, None, &t).unwrap();
        assert!(id
            .as_str()
            .starts_with("spiffe://example.org/signet/agent/join_token/"));
        assert!(!id.as_str().contains(&t[..16]));
        let id = agent_id(&td, Some("node-1"), &t).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/signet/agent/node-1");
        assert!(agent_id(&td, Some("a/b"), &t).is_err());
        assert!(agent_id(&td, Some("bad name"), &t).is_err());
    }
}
