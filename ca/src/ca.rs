//! The CA's shared state and its operations, independent of any transport:
//! the admin API (and, next, the node API) are thin layers over [`Ca`].

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use signet_identity::clock::Clock;
use signet_identity::jwt_svid::JwtAuthority;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{BundleError, CertificateDer, TrustBundle, TrustDomain};

use crate::config::{CaConfig, ConfigError};
use crate::keys::authority::{create_private_dir, replica_id, Authority, AuthorityError};
use crate::keys::issuance::IssueError;
use crate::keys::jwt::JwtSigner;
use crate::metrics::Metrics;
use crate::registry::endpoint_registry::EndpointRegistry;
use crate::registry::entry::EntryError;
use crate::registry::entry_cache::EntryCache;
use crate::registry::join_token::JoinTokenError;
use crate::store::{Store, StoreError};

/// Everything that can go wrong in a CA operation. The admin API maps each
/// variant to one gRPC status in one place (`api::status`).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage failure, not found, or duplicate.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry failed validation.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// Signing key problem.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// Issuance refused or failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// Join token problem.
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    /// Bundle could not be assembled.
    #[error("trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// A node or agent was refused.
    #[error(transparent)]
    AgentRefused(#[from] AgentRefused),
    /// Any other invalid request.
    #[error("{0}")]
    InvalidArgument(String),
}

/// The running CA: configuration, database, current signing authority.
pub struct Ca {
    /// The configuration it was started with: read by `Ca`'s operations;
    /// the server reads its listener settings through [`Ca::config`].
    config: CaConfig,
    /// Its trust domain.
    pub trust_domain: TrustDomain,
    /// Its database: reached only through `Ca`'s operations.
    store: Store,
    /// Its metrics: what the CA decides, it counts itself; the API counts
    /// what happens at its doors through [`Ca::metrics`].
    metrics: Metrics,
    /// Where it reads the time (the system's; tests drive a manual one).
    pub clock: Clock,
    authority: RwLock<Arc<Authority>>,
    jwt_signer: RwLock<Arc<JwtSigner>>,
    /// This replica's ID (owner of its key files).
    replica: String,
    /// The x509pop method's roots and template, when configured.
    x509pop: Option<crate::node_attestation::x509pop::X509PopAttestor>,
    /// The sshpop method's certificate authorities, when configured.
    sshpop: Option<crate::node_attestation::sshpop::SshPopAttestor>,
    /// Every entry, by agent, kept current by the change feed.
    cache: RwLock<EntryCache>,
    /// Every published endpoint, by SPIFFE ID, kept current by the change
    /// feed.
    endpoints: RwLock<EndpointRegistry>,
    /// One reader of the change feed at a time.
    feed_reader: tokio::sync::Mutex<()>,
    /// Wakes the change feed task (a notification from another replica).
    pub(crate) feed_wake: Notify,
    /// The trust bundle as published now, with the tainted keys; agent
    /// streams watch it.
    bundle: watch::Sender<Arc<PublishedBundle>>,
    /// The ID of the X.509 key this replica signs with; the node API's
    /// server SVID is re-signed when it changes.
    active_key: watch::Sender<String>,
    /// When the first authority in `bundle` expires, Unix seconds: the
    /// bundle is read again then.
    bundle_until: AtomicI64,
}

/// Most change rows read in one query.
const FEED_PAGE: i64 = 1000;

impl Ca {
    /// Opens (or initialises) the CA: data dir, database, signing key, and a
    /// self-test of key + chain + bundle.
    pub async fn open(config: CaConfig) -> Result<Arc<Ca>, CaError> {
        Self::open_with_clock(config, Clock::system()).await
    }

    /// [`Ca::open`] with the time read from `clock`.
    pub async fn open_with_clock(config: CaConfig, clock: Clock) -> Result<Arc<Ca>, CaError> {
        let trust_domain = config.validate()?;
        create_private_dir(&config.data_dir)?;
        let store = Store::connect(&config.database_url()).await?;
        let now = clock.now();
        let replica = replica_id(&config.data_dir)?;
        let x509_keys = crate::keys::x509::X509Slot {
            store: &store,
            config: &config,
            trust_domain: &trust_domain,
            replica: &replica,
        };
        let authority = crate::keys::x509::load_or_create(&x509_keys, now).await?;
        let jwt_keys = crate::keys::jwt::JwtSlot {
            store: &store,
            config: &config,
            replica: &replica,
        };
        let (active_jwt_key, _) = crate::keys::slot::rotate(&jwt_keys, now).await?;
        let jwt_signer = crate::keys::jwt::load(&active_jwt_key, &config)?;
        let x509pop = match &config.node_attestation.x509pop {
            Some(c) => Some(
                crate::node_attestation::x509pop::X509PopAttestor::load(
                    &c.ca_bundle,
                    c.agent_path_template.as_deref(),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let sshpop = match &config.node_attestation.sshpop {
            Some(c) => Some(
                crate::node_attestation::sshpop::SshPopAttestor::load(
                    &c.cert_authorities,
                    c.cert_authorities_file.as_deref(),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let (entries, revision) = store.entries_at_revision().await?;
        // Read after the revision: changes since are applied again.
        let endpoints = store.list_endpoints().await?;
        let active_key_id = authority.id.clone();
        let (bundle, bundle_until) = load_bundle(&store, &config, &trust_domain, now).await?;
        let ca = Arc::new(Ca {
            metrics: Metrics::new(),
            clock,
            authority: RwLock::new(Arc::new(authority)),
            jwt_signer: RwLock::new(Arc::new(jwt_signer)),
            replica,
            x509pop,
            sshpop,
            cache: RwLock::new(EntryCache::load(entries, revision)),
            endpoints: RwLock::new(EndpointRegistry::load(endpoints)),
            feed_reader: tokio::sync::Mutex::new(()),
            feed_wake: Notify::new(),
            bundle: watch::channel(Arc::new(bundle)).0,
            active_key: watch::channel(active_key_id).0,
            bundle_until: AtomicI64::new(bundle_until),
            config,
            trust_domain,
            store,
        });
        ca.catch_up().await?;
        let bundle = ca.bundle().await?;
        ca.authority().self_test(&bundle, now)?;
        ca.metrics
            .set_ca_expiry(unix_seconds(ca.authority().not_after));
        Ok(ca)
    }

    /// The time now, Unix seconds.
    pub(crate) fn now_secs(&self) -> i64 {
        unix_seconds(self.clock.now())
    }

    /// The signing authority in force.
    pub fn authority(&self) -> Arc<Authority> {
        match self.authority.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The configuration it runs with, for the server that composes its
    /// listeners (addresses, limits, the OIDC listener); read-only.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Its metrics, for the API layer to count what happens at its doors
    /// (listener refusals, streams, admin calls) and to serve `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The JWT key this replica signs with now.
    pub fn jwt_signer(&self) -> Arc<JwtSigner> {
        match self.jwt_signer.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// This replica's ID.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Closes the database (on shutdown).
    pub async fn close(&self) {
        self.store.close().await
    }

    /// Whether the database is one several replicas share (PostgreSQL),
    /// whose commits other replicas announce.
    pub fn shares_database(&self) -> bool {
        self.store.backend() == crate::store::Backend::Postgres
    }

    /// Deletes change feed rows older than `before` (Unix seconds).
    pub async fn prune_changes(&self, before: i64) -> Result<u64, CaError> {
        Ok(self.store.prune_changes(before).await?)
    }

    /// Deletes join tokens expired at `now` (Unix seconds).
    pub async fn prune_join_tokens(&self, now: i64) -> Result<u64, CaError> {
        Ok(self.store.prune_join_tokens(now).await?)
    }

    /// Whether the CA can issue now: signing cert valid for another minute,
    /// and the entries agents sync from readable (not just the database
    /// reachable: a damaged table answers `SELECT 1` fine).
    pub async fn is_ready(&self) -> bool {
        let cert_ok = self.authority().not_after > self.clock.now() + Duration::from_secs(60);
        if !cert_ok {
            return false;
        }
        match self.store.probe_entries().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "not ready: the entries table cannot be read");
                false
            }
        }
    }
}

/// Which kind of signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Signs X.509-SVIDs.
    X509,
    /// Signs JWT-SVIDs.
    Jwt,
}

/// A signing key of either kind.
#[derive(Debug, Clone)]
pub enum AnyKey {
    /// An X.509 key.
    X509(crate::store::CaKeyRecord),
    /// A JWT key.
    Jwt(crate::store::JwtKeyRecord),
}

/// The trust bundle as agents get it: the SPIFFE bundle, and the tainted
/// keys (what they signed must be replaced).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedBundle {
    /// The bundle.
    pub bundle: TrustBundle,
    /// Subject key identifiers of the tainted signing certificates, as the
    /// authority key identifier of an SVID they signed names them.
    pub tainted: Vec<Vec<u8>>,
    /// The kids of tainted JWT keys.
    pub tainted_jwt: Vec<String>,
}

/// The bundle in the database at `now`, and when its first authority
/// expires (Unix seconds).
async fn load_bundle(
    store: &Store,
    config: &CaConfig,
    trust_domain: &TrustDomain,
    now: std::time::SystemTime,
) -> Result<(PublishedBundle, i64), CaError> {
    let now = unix_seconds(now);
    let tainted = store
        .ca_keys(now)
        .await?
        .iter()
        .filter(|k| k.journal.tainted)
        .filter_map(|k| signet_identity::x509_svid::subject_key_id(&k.cert_der))
        .collect();
    let (certs, sequence) = store.bundle(now).await?;
    let keys = store.jwt_keys(now).await?;
    let tainted_jwt = keys
        .iter()
        .filter(|k| k.journal.tainted)
        .map(|k| k.kid.clone())
        .collect();
    let jwt_authorities = keys
        .iter()
        .map(|k| JwtAuthority::from_spki_der(&k.kid, &k.public_key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BundleError::from)?;
    let until = certs
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .chain(keys.iter().map(|k| k.journal.not_after))
        .min()
        .unwrap_or(i64::MAX);
    let mut bundle = TrustBundle::new(
        trust_domain.clone(),
        certs.into_iter().map(CertificateDer::from).collect(),
    )?
    .with_jwt_authorities(jwt_authorities);
    bundle.sequence = sequence;
    bundle.refresh_hint_secs = Some(config.bundle_refresh_hint);
    Ok((
        PublishedBundle {
            bundle,
            tainted,
            tainted_jwt,
        },
        until,
    ))
}

/// A signed JWT-SVID and its times (Unix seconds).
pub struct MintedJwt {
    /// Compact JWS.
    pub token: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
}

mod agents;
pub use agents::{AgentRefused, AgentSvid, Attestation};
mod endpoints;
mod keys;
mod registry;
mod signing;

#[cfg(test)]
mod tests;
