//! CA configuration: a TOML file, each field overridable by a CLI flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use signet_identity::TrustDomain;

use crate::store::redact_url;

pub use signet_identity::daemon::ConfigError;

/// Everything `signet ca serve` needs. Every field has a default so that an
/// empty file (or none) plus `--trust-domain` is a working CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// The trust domain this CA is the authority for. Default `example.org`.
    pub trust_domain: String,
    /// Where keys and the SQLite database live. Default `/var/lib/signet/ca`.
    pub data_dir: PathBuf,
    /// Node API listen address (agents connect here). Default `0.0.0.0:8081`.
    pub listen: String,
    /// Admin API Unix socket, mode 0600. Default `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// `sqlite://...` or `postgres://...`. Default: `<data_dir>/signet.db` (SQLite, WAL).
    pub database_url: Option<String>,
    /// Address for `/metrics`, `/ready`, `/live`. Default `127.0.0.1:9988`.
    pub metrics_listen: String,
    /// X.509-SVID lifetime when an entry does not set one, seconds. Default 3600.
    pub default_x509_svid_ttl: u64,
    /// Largest X.509-SVID lifetime an entry may ask for, seconds. Default 86400.
    pub max_x509_svid_ttl: u64,
    /// JWT-SVID lifetime when an entry does not set one, seconds. Default 300.
    pub default_jwt_svid_ttl: u64,
    /// Largest JWT-SVID lifetime an entry may ask for, seconds. Default 3600.
    pub max_jwt_svid_ttl: u64,
    /// Lifetime of each JWT signing key, seconds. Default one day. The next
    /// key is prepared (published, not signing) with half of it left and
    /// takes over with a sixth left, so it must be at least six times
    /// `max_jwt_svid_ttl`.
    pub jwt_key_ttl: u64,
    /// JWT signing key type: `ec-p256` (ES256, default) or `rsa-2048`
    /// (RS256, for relying parties that only take RSA).
    pub jwt_key_type: JwtKeyType,
    /// OIDC discovery (`[oidc]`): off unless set.
    pub oidc: Option<OidcConfig>,
    /// Node attestation methods besides join tokens (`[node_attestation]`),
    /// each off unless configured. Join tokens need no configuration.
    pub node_attestation: NodeAttestationConfig,
    /// Lifetime of the CA's own signing certificate, seconds. Default one year.
    pub ca_ttl: u64,
    /// Default join token lifetime, seconds. Default 600.
    pub join_token_ttl: u64,
    /// `spiffe_refresh_hint` published with the bundle, seconds. Default 300.
    pub bundle_refresh_hint: u64,
    /// Upstream CA certificate (PEM, may include its chain). With
    /// `upstream_key`, Signet signs with an intermediate under it.
    pub upstream_cert: Option<PathBuf>,
    /// Upstream CA private key (PEM, PKCS#8).
    pub upstream_key: Option<PathBuf>,
    /// Roots of the upstream PKI (PEM). Default: the self-signed certificate
    /// at the end of `upstream_cert`.
    pub upstream_bundle: Option<PathBuf>,
    /// Recovery only (flag `--replace-lost-key`, not meant to stay in a
    /// file): when this replica's active signing key file is missing, mark
    /// the key lost and make a new one instead of refusing to start. Every
    /// agent and workload then needs the new bundle. Default false.
    pub replace_lost_key: bool,
    /// Seconds an agent's endpoints stay published after its connection to
    /// the CA is lost (it reconnects to this or another replica and
    /// publishes them again); then they are withdrawn. Default 30.
    pub endpoint_grace: u64,
    /// Limits of the node API (`[limits]`); each has a default.
    pub limits: NodeApiLimits,
}

/// The algorithm of the CA's JWT signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum JwtKeyType {
    /// ECDSA P-256, tokens signed ES256.
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    /// RSA 2048, tokens signed RS256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

/// `[node_attestation]`: how nodes may prove themselves besides join
/// tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeAttestationConfig {
    /// `[node_attestation.x509pop]`: nodes holding a certificate (and its
    /// key) from a CA trusted for nodes.
    pub x509pop: Option<X509PopConfig>,
    /// `[node_attestation.sshpop]`: nodes holding an SSH host key
    /// certified by a trusted SSH certificate authority.
    pub sshpop: Option<SshPopConfig>,
}

/// `[node_attestation.sshpop]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshPopConfig {
    /// The SSH certificate authorities' public keys, OpenSSH format
    /// (`ssh-ed25519 AAAA…`).
    pub cert_authorities: Vec<String>,
    /// A file of them, one per line (as sshd's `TrustedUserCAKeys`).
    pub cert_authorities_file: Option<PathBuf>,
}

/// `[node_attestation.x509pop]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopConfig {
    /// PEM file of the roots trusted to issue node certificates (the
    /// company PKI's, not the Signet CA's).
    pub ca_bundle: PathBuf,
    /// The agent ID's path below `/signet/agent/`, SPIRE's template
    /// spelling; default `{{ .PluginName }}/{{ .Fingerprint }}`. Fields:
    /// `.PluginName`, `.Fingerprint` (SHA-1 of the leaf, hex),
    /// `.Subject.CommonName`, `.SerialNumberHex`.
    pub agent_path_template: Option<String>,
}

/// OIDC discovery: a listener serving `/.well-known/openid-configuration`
/// and the JWKS it names, so that cloud IAM, Vault and any OIDC relying
/// party can verify Signet's JWT-SVIDs. With it set, JWT-SVIDs carry `iss`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// The issuer URL relying parties are configured with
    /// (`https://oidc.example.org`); the discovery document lives under it.
    pub issuer: String,
    /// TLS certificate chain (PEM) for the listener. Without `tls_cert` and
    /// `tls_key` it speaks plain HTTP, for use behind a TLS-terminating
    /// load balancer.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8).
    pub tls_key: Option<PathBuf>,
    /// Open connections to the listener; more are closed at accept (and
    /// counted in `signet_ca_listener_refusals_total`). Default 1,000.
    #[serde(default = "OidcConfig::default_max_connections")]
    pub max_connections: usize,
    /// Open connections per client address; more are closed at accept.
    /// Default 32.
    #[serde(default = "OidcConfig::default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Seconds a client gets for its TLS handshake and for each request's
    /// headers; also the longest a keep-alive connection may stay idle.
    /// Default 10.
    #[serde(default = "OidcConfig::default_header_timeout")]
    pub header_timeout: u64,
    /// Seconds a connection may stay open at all. Default 60.
    #[serde(default = "OidcConfig::default_connection_lifetime")]
    pub connection_lifetime: u64,
}

impl OidcConfig {
    fn default_max_connections() -> usize {
        1000
    }
    fn default_max_connections_per_source() -> usize {
        32
    }
    fn default_header_timeout() -> u64 {
        10
    }
    fn default_connection_lifetime() -> u64 {
        60
    }

    /// The listener's limits.
    pub fn http_limits(&self) -> signet_identity::http_serve::HttpLimits {
        signet_identity::http_serve::HttpLimits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            max_lifetime: std::time::Duration::from_secs(self.connection_lifetime),
        }
    }

    /// The path the issuer URL names (`""` for none, else `/tenant-a`):
    /// discovery is served under it, as relying parties look for it at
    /// `<issuer>/.well-known/openid-configuration`.
    pub fn issuer_path(&self) -> &str {
        let rest = self.issuer.strip_prefix("https://").unwrap_or(&self.issuer);
        rest.find('/').map_or("", |i| &rest[i..])
    }
}

/// What one client may hold of the node API, and for how long. Hitting a
/// limit is counted in `signet_ca_node_refusals_total{reason=...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeApiLimits {
    /// Seconds a client gets to complete its TLS handshake. Default 5.
    pub handshake_timeout: u64,
    /// Open node API connections; more are closed at accept. Default
    /// 10,000 (the open-file limit is raised to its hard limit at start).
    pub max_connections: usize,
    /// Connections per source address that have not completed a TLS
    /// handshake with an agent SVID (handshaking, or attesting without
    /// one); more are closed at accept. Default 32.
    pub max_unauthenticated_per_source: usize,
    /// Seconds a connection without an agent SVID (attestation only) may
    /// stay open. Default 30.
    pub unauthenticated_lifetime: u64,
    /// Failed attestations per source address per minute; past it,
    /// attestations from that address are refused at once
    /// (RESOURCE_EXHAUSTED) without touching the database. Default 10.
    pub attestation_failures_per_minute: u32,
    /// Largest request message from an agent, bytes. Default 1 MiB (a
    /// full SignSvids batch of 1,000 CSRs is about 0.4 MiB).
    pub max_request_bytes: usize,
    /// Concurrent streams per agent connection. Default 32.
    pub max_concurrent_streams: u32,
}

impl Default for NodeApiLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: 5,
            max_connections: 10_000,
            max_unauthenticated_per_source: 32,
            unauthenticated_lifetime: 30,
            attestation_failures_per_minute: 10,
            max_request_bytes: 1024 * 1024,
            max_concurrent_streams: 32,
        }
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            trust_domain: "example.org".into(),
            data_dir: PathBuf::from("/var/lib/signet/ca"),
            listen: "0.0.0.0:8081".into(),
            admin_socket: None,
            database_url: None,
            metrics_listen: "127.0.0.1:9988".into(),
            default_x509_svid_ttl: 3600,
            max_x509_svid_ttl: 86400,
            default_jwt_svid_ttl: 300,
            max_jwt_svid_ttl: 3600,
            jwt_key_ttl: 86400,
            jwt_key_type: JwtKeyType::EcP256,
            oidc: None,
            node_attestation: NodeAttestationConfig::default(),
            ca_ttl: 365 * 86400,
            join_token_ttl: 600,
            bundle_refresh_hint: 300,
            upstream_cert: None,
            upstream_key: None,
            upstream_bundle: None,
            replace_lost_key: false,
            endpoint_grace: 30,
            limits: NodeApiLimits::default(),
        }
    }
}

impl CaConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        signet_identity::daemon::read_toml(path)
    }

    /// Checks values and returns the parsed trust domain.
    pub fn validate(&self) -> Result<TrustDomain, ConfigError> {
        let td = TrustDomain::new(&self.trust_domain).map_err(|e| {
            ConfigError::Invalid(format!("trust_domain {:?}: {e}", self.trust_domain))
        })?;
        if self.default_x509_svid_ttl == 0 || self.max_x509_svid_ttl == 0 {
            return Err(ConfigError::Invalid("SVID TTLs must be positive".into()));
        }
        if self.default_x509_svid_ttl > self.max_x509_svid_ttl {
            return Err(ConfigError::Invalid(format!(
                "default_x509_svid_ttl ({}) exceeds max_x509_svid_ttl ({})",
                self.default_x509_svid_ttl, self.max_x509_svid_ttl
            )));
        }
        let activate_at = crate::keys::rotation::Schedule::for_lifetime(self.ca_ttl).activate_at;
        if (activate_at as u64) < self.max_x509_svid_ttl {
            return Err(ConfigError::Invalid(format!(
                "max_x509_svid_ttl ({}) must be at most min(ca_ttl / 6, 7 days) = {activate_at}s: a CA key hands over to the next when it has that much left, and no SVID may outlive its key; raise ca_ttl or lower max_x509_svid_ttl",
                self.max_x509_svid_ttl
            )));
        }
        if self.default_jwt_svid_ttl == 0 || self.default_jwt_svid_ttl > self.max_jwt_svid_ttl {
            return Err(ConfigError::Invalid(format!(
                "default_jwt_svid_ttl ({}) must be positive and at most max_jwt_svid_ttl ({})",
                self.default_jwt_svid_ttl, self.max_jwt_svid_ttl
            )));
        }
        if self.max_jwt_svid_ttl > 7 * 86400 {
            return Err(ConfigError::Invalid(format!(
                "max_jwt_svid_ttl ({}) is more than 7 days; JWT-SVIDs are bearer tokens, keep them short",
                self.max_jwt_svid_ttl
            )));
        }
        if self.jwt_key_ttl < 6 * self.max_jwt_svid_ttl {
            return Err(ConfigError::Invalid(format!(
                "jwt_key_ttl ({}) must be at least 6 × max_jwt_svid_ttl ({}): a key signs only during the last sixth of its life before the next takes over",
                self.jwt_key_ttl, self.max_jwt_svid_ttl
            )));
        }
        if let Some(oidc) = &self.oidc {
            // Relying parties (cloud IAM, Vault, go-oidc, PyJWT) require an
            // https issuer; behind a TLS-terminating load balancer the
            // listener speaks plain HTTP but the issuer is still https.
            let rest = oidc.issuer.strip_prefix("https://");
            let host = rest.map(|r| r.split('/').next().unwrap_or(""));
            if rest.is_none_or(|r| {
                r.contains(['?', '#', ' ', '\\'])
                    || r.ends_with('/')
                    || r.contains("//")
                    || r.split('/').any(|seg| seg == "." || seg == "..")
            }) || host.is_none_or(str::is_empty)
            {
                return Err(ConfigError::Invalid(format!(
                    "[oidc] issuer {:?} must be an https:// URL with a host, and no query, fragment, empty or dot segment or trailing slash (e.g. https://oidc.example.org or https://oidc.example.org/tenant-a)",
                    oidc.issuer
                )));
            }
            if oidc.max_connections == 0
                || oidc.max_connections_per_source == 0
                || oidc.header_timeout == 0
                || oidc.connection_lifetime == 0
            {
                return Err(ConfigError::Invalid(
                    "[oidc] max_connections, max_connections_per_source, header_timeout and connection_lifetime must be positive".into(),
                ));
            }
            if oidc.tls_cert.is_some() != oidc.tls_key.is_some() {
                return Err(ConfigError::Invalid(
                    "[oidc] tls_cert and tls_key go together: set both or neither".into(),
                ));
            }
        }
        if self.join_token_ttl == 0
            || self.join_token_ttl as i64 > crate::registry::join_token::MAX_TTL
        {
            return Err(ConfigError::Invalid(format!(
                "join_token_ttl ({}) must be between 1 s and {} days",
                self.join_token_ttl,
                crate::registry::join_token::MAX_TTL / 86400
            )));
        }
        let l = &self.limits;
        if l.handshake_timeout == 0
            || l.max_connections == 0
            || l.max_unauthenticated_per_source == 0
            || l.unauthenticated_lifetime == 0
            || l.attestation_failures_per_minute == 0
            || l.max_request_bytes < 64 * 1024
            || l.max_concurrent_streams == 0
        {
            return Err(ConfigError::Invalid(
                "[limits]: every limit must be positive (max_request_bytes at least 65536)".into(),
            ));
        }
        if self.upstream_cert.is_some() != self.upstream_key.is_some() {
            return Err(ConfigError::Invalid(
                "upstream_cert and upstream_key go together: set both or neither".into(),
            ));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "database_url must start with sqlite: or postgres:// (got {:?})",
                    redact_url(url)
                )));
            }
        }
        Ok(td)
    }

    /// The admin socket path, defaulted under the data dir.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    /// Where this replica's private key files live: `<data_dir>/keys`.
    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// The database URL, defaulted to SQLite in the data dir.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("signet.db").display()
            )
        })
    }

    /// Default SVID TTL as a duration.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_secs(self.default_x509_svid_ttl)
    }

    /// The JWT-SVID issuer (`iss`), when OIDC discovery is on.
    pub fn jwt_issuer(&self) -> Option<&str> {
        self.oidc.as_ref().map(|o| o.issuer.as_str())
    }

    /// Maximum SVID TTL as a duration.
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_x509_svid_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(
            redact_url("postgres://signet:s3cret@db:5432/signet"),
            "postgres://signet:****@db:5432/signet"
        );
        assert_eq!(redact_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = toml::from_str::<CaConfig>("trust_domian = \"x\"").unwrap_err();
        assert!(e.to_string().contains("trust_domian"));
        let c = CaConfig {
            trust_domain: "Bad TD".into(),
            ..CaConfig::default()
        };
        assert!(c.validate().is_err());
        let c = CaConfig {
            default_x509_svid_ttl: 10,
            max_x509_svid_ttl: 5,
            ..CaConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn svids_must_fit_in_the_last_sixth_of_a_ca_key_both_sides() {
        let with = |ca_ttl: u64, max: u64| CaConfig {
            ca_ttl,
            max_x509_svid_ttl: max,
            default_x509_svid_ttl: max,
            ..CaConfig::default()
        };
        assert!(with(600, 100).validate().is_ok());
        let e = with(600, 101).validate().unwrap_err().to_string();
        assert!(e.contains("ca_ttl"), "{e}");
        // Long-lived keys hand over with 7 days left.
        assert!(with(365 * 86400, 7 * 86400).validate().is_ok());
        assert!(with(365 * 86400, 7 * 86400 + 1).validate().is_err());
    }

    #[test]
    fn an_oidc_issuer_must_be_https_with_a_host_and_a_clean_path() {
        let with = |extra: &str| {
            toml::from_str::<CaConfig>(&format!("[oidc]\nlisten = \"127.0.0.1:0\"\n{extra}"))
                .unwrap()
                .validate()
        };
        for good in [
            "issuer = \"https://oidc.example.org\"",
            "issuer = \"https://oidc.example.org:8443\"",
            "issuer = \"https://oidc.example.org/tenant-a\"",
            "issuer = \"https://oidc.example.org/a/b\"",
        ] {
            assert!(with(good).is_ok(), "{good}");
        }
        for bad in [
            "issuer = \"http://oidc.example.org\"",
            "issuer = \"https://\"",
            "issuer = \"https:///tenant\"",
            "issuer = \"https://oidc.example.org/\"",
            "issuer = \"https://oidc.example.org/a//b\"",
            "issuer = \"https://oidc.example.org/a/../b\"",
            "issuer = \"https://oidc.example.org/?x=1\"",
            "issuer = \"https://oidc.example.org#f\"",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("https://"), "{bad}: {e}");
        }
        let ok = "issuer = \"https://oidc.example.org\"\n";
        for zero in [
            "max_connections = 0",
            "max_connections_per_source = 0",
            "header_timeout = 0",
            "connection_lifetime = 0",
        ] {
            assert!(with(&format!("{ok}{zero}")).is_err(), "{zero}");
        }
        let defaults = toml::from_str::<CaConfig>(&format!("[oidc]\nlisten = \"x\"\n{ok}"))
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(
            (
                defaults.max_connections,
                defaults.max_connections_per_source,
                defaults.header_timeout,
                defaults.connection_lifetime
            ),
            (1000, 32, 10, 60)
        );
    }
}
