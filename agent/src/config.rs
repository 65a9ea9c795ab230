//! Agent configuration: a TOML file, each field overridable by a CLI flag.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use signet_identity::daemon::ConfigError;

/// How a node proves itself to the CA (`node_attestation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAttestationMethod {
    /// A single-use join token a person minted (`signet token create`);
    /// once its SVID is lost or expired, the node needs a new one.
    #[default]
    JoinToken,
    /// A certificate and key from a CA the Signet CA trusts for nodes; the
    /// node attests again by itself whenever it must.
    X509pop,
    /// An SSH host key certified by an SSH CA the Signet CA trusts; the
    /// node attests again by itself whenever it must.
    Sshpop,
}

impl NodeAttestationMethod {
    /// The method's name, as the CA records it.
    pub fn as_str(self) -> &'static str {
        use signet_identity::node_attestation as m;
        match self {
            Self::JoinToken => m::JOIN_TOKEN,
            Self::X509pop => m::X509POP,
            Self::Sshpop => m::SSHPOP,
        }
    }
}

/// Everything `signet agent run` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The trust domain of the CA. Default `example.org`.
    pub trust_domain: String,
    /// The CA's node API: one `host:port` or a list of them (replicas),
    /// tried in turn; a DNS name is resolved again on every connection.
    /// Default `127.0.0.1:8081`.
    #[serde(deserialize_with = "one_or_many")]
    pub ca: Vec<String>,
    /// PEM bundle to authenticate the CA on first contact. Required unless
    /// `insecure_bootstrap`, or the agent already has a bundle in its data dir.
    pub trust_bundle: Option<PathBuf>,
    /// Trust the CA blindly on first contact (development only).
    pub insecure_bootstrap: bool,
    /// How the node proves itself to the CA. Default `join_token`.
    pub node_attestation: NodeAttestationMethod,
    /// Single-use join token for first attestation (`join_token`).
    pub join_token: Option<String>,
    /// The node's certificate (PEM or DER; intermediates may follow the
    /// leaf), for `x509pop`.
    pub x509pop_cert: Option<PathBuf>,
    /// The node certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1),
    /// for `x509pop`.
    pub x509pop_key: Option<PathBuf>,
    /// The OpenSSH host certificate, for `sshpop`. Default: the first
    /// `/etc/ssh/ssh_host_{ed25519,ecdsa,rsa}_key-cert.pub` there is.
    pub sshpop_cert: Option<PathBuf>,
    /// The host key it certifies (OpenSSH format), for `sshpop`. Default:
    /// the same path without `-cert.pub`.
    pub sshpop_key: Option<PathBuf>,
    /// Agent SVID, key (0600) and bundle. Default `/var/lib/signet/agent`.
    pub data_dir: PathBuf,
    /// Workload API socket, open to every local user. Default `/run/signet/agent.sock`.
    pub socket: PathBuf,
    /// Renew an SVID when this fraction of its lifetime has passed. Default 0.5.
    pub renewal_fraction: f64,
    /// Address for `/metrics`, `/ready`, `/live`. Default `127.0.0.1:9989`.
    pub metrics_listen: String,
    /// Limits of the Workload API (`[limits]`); each has a default.
    pub limits: WorkloadApiLimits,
}

/// What one local user may hold of the Workload API. Hitting a limit is
/// counted in `signet_agent_workload_refusals_total{reason=...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadApiLimits {
    /// Open Workload API connections in all. Default 4,096.
    pub max_connections: usize,
    /// Open connections per caller uid; more from that uid are closed at
    /// accept, other users are unaffected. Default 64.
    pub max_connections_per_uid: usize,
    /// Open `FetchX509SVID`/`FetchX509Bundles` streams per caller uid;
    /// more get RESOURCE_EXHAUSTED. Default 64.
    pub max_streams_per_uid: usize,
    /// Binaries larger than this are not hashed for `unix:sha256`
    /// selectors (the selector is then absent). Default 1 GiB.
    pub max_binary_hash_bytes: u64,
    /// Binaries hashed at once, on the blocking pool. Default 2.
    pub concurrent_binary_hashes: usize,
    /// Identities this node watches at the CA at once for its sidecars'
    /// discovery (one CA stream each, however many local watchers share
    /// it, on a connection of their own beside the publisher's stream, so
    /// at most the CA's streams per connection less one); a watch of one
    /// more gets RESOURCE_EXHAUSTED. Default 31.
    pub max_watched_identities: usize,
    /// Of those, identities one caller uid may have watched at once, so no
    /// user can take every one. Default 16.
    pub max_watched_identities_per_uid: usize,
    /// JWT-SVIDs cached at once, one per (SPIFFE ID, audience set), for
    /// every workload of the node. Default 10,000.
    pub jwt_cache_entries: usize,
    /// Of those, tokens one SPIFFE ID may hold: a workload asking for many
    /// audiences cycles its own tokens, and a full cache never gives up an
    /// identity's last token for another's. Default 1,000.
    pub jwt_cache_entries_per_identity: usize,
}

impl Default for WorkloadApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_uid: 64,
            max_streams_per_uid: 64,
            max_binary_hash_bytes: 1 << 30,
            concurrent_binary_hashes: 2,
            max_watched_identities: 31,
            max_watched_identities_per_uid: 16,
            jwt_cache_entries: 10_000,
            jwt_cache_entries_per_identity: 1_000,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            trust_domain: "example.org".into(),
            ca: vec!["127.0.0.1:8081".into()],
            trust_bundle: None,
            insecure_bootstrap: false,
            node_attestation: NodeAttestationMethod::default(),
            join_token: None,
            x509pop_cert: None,
            x509pop_key: None,
            sshpop_cert: None,
            sshpop_key: None,
            data_dir: PathBuf::from("/var/lib/signet/agent"),
            socket: PathBuf::from("/run/signet/agent.sock"),
            renewal_fraction: 0.5,
            metrics_listen: "127.0.0.1:9989".into(),
            limits: WorkloadApiLimits::default(),
        }
    }
}

/// `ca = "host:port"` or `ca = ["host:port", ...]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl AgentConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        signet_identity::daemon::read_toml(path)
    }

    /// Checks values and returns the trust domain.
    pub fn validate(&self) -> Result<signet_identity::TrustDomain, ConfigError> {
        let td = signet_identity::TrustDomain::new(&self.trust_domain).map_err(|e| {
            ConfigError::Invalid(format!("trust_domain {:?}: {e}", self.trust_domain))
        })?;
        if !(self.renewal_fraction > 0.05 && self.renewal_fraction < 0.95) {
            return Err(ConfigError::Invalid(format!(
                "renewal_fraction {} must be between 0.05 and 0.95",
                self.renewal_fraction
            )));
        }
        if self.ca.is_empty() {
            return Err(ConfigError::Invalid(
                "ca: give at least one CA address (host:port)".into(),
            ));
        }
        for addr in &self.ca {
            let port = addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(ConfigError::Invalid(format!(
                    "ca {addr:?}: expected host:port, e.g. ca.example.org:8081"
                )));
            }
        }
        if self.insecure_bootstrap && self.trust_bundle.is_some() {
            return Err(ConfigError::Invalid(
                "give either trust_bundle or insecure_bootstrap, not both".into(),
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_connections_per_uid == 0
            || l.max_streams_per_uid == 0
            || l.concurrent_binary_hashes == 0
            || l.max_watched_identities == 0
            || l.max_watched_identities_per_uid == 0
            || l.max_watched_identities_per_uid > l.max_watched_identities
            || l.jwt_cache_entries == 0
            || l.jwt_cache_entries_per_identity == 0
            || l.jwt_cache_entries_per_identity > l.jwt_cache_entries
        {
            return Err(ConfigError::Invalid(
                "[limits]: every limit must be positive, max_watched_identities_per_uid at most max_watched_identities, jwt_cache_entries_per_identity at most jwt_cache_entries".into(),
            ));
        }
        if self.node_attestation == NodeAttestationMethod::X509pop
            && (self.x509pop_cert.is_none() || self.x509pop_key.is_none())
        {
            return Err(ConfigError::Invalid(
                "node_attestation = \"x509pop\" needs x509pop_cert and x509pop_key (--x509pop-cert, --x509pop-key)".into(),
            ));
        }
        Ok(td)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(toml_text: &str) -> Result<AgentConfig, String> {
        toml::from_str::<AgentConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn ca_is_one_address_or_a_list() {
        assert_eq!(parse(r#"ca = "a:8081""#).unwrap().ca, ["a:8081"]);
        assert_eq!(
            parse(r#"ca = ["a:8081", "b.example.org:8081"]"#)
                .unwrap()
                .ca,
            ["a:8081", "b.example.org:8081"]
        );
        assert_eq!(AgentConfig::default().ca, ["127.0.0.1:8081"]);
        assert!(parse("ca = 8081").is_err());
    }

    #[test]
    fn x509pop_needs_its_certificate_and_key() {
        let c = parse("node_attestation = \"x509pop\"\nx509pop_cert = \"/c.pem\"").unwrap();
        assert_eq!(c.node_attestation, NodeAttestationMethod::X509pop);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("x509pop_key"), "{e}");
        let ok = parse(
            "node_attestation = \"x509pop\"\nx509pop_cert = \"/c.pem\"\nx509pop_key = \"/k.pem\"",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        assert!(parse("node_attestation = \"tpm\"").is_err());
        assert_eq!(
            AgentConfig::default().node_attestation,
            NodeAttestationMethod::JoinToken
        );
    }

    #[test]
    fn ca_addresses_must_be_host_and_port() {
        let with = |ca: Vec<&str>| AgentConfig {
            ca: ca.into_iter().map(str::to_owned).collect(),
            ..Default::default()
        };
        assert!(with(vec!["a:8081", "[::1]:8081"]).validate().is_ok());
        for bad in [
            vec![],
            vec!["a"],
            vec!["a:8081", ":8081"],
            vec!["a:0"],
            vec!["a:http"],
        ] {
            let e = with(bad.clone()).validate().unwrap_err().to_string();
            assert!(e.contains("ca"), "{bad:?}: {e}");
        }
    }
}
