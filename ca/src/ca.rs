//! The CA's shared state and its operations, independent of any transport:
//! the admin API (and, next, the node API) are thin layers over [`Ca`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use signet_identity::clock::Clock;
use signet_identity::jwt_svid::{jwt_svid_claims, JwtAuthority};
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{BundleError, CertificateDer, SpiffeId, TrustBundle, TrustDomain};

use crate::authority::{create_private_dir, replica_id, Authority, AuthorityError};
use crate::config::{CaConfig, ConfigError};
use crate::entry::{Entry, EntryError, EntryInput, EntrySpec};
use crate::issuance::{sign_for_entry, IssueError, IssuedSvid};
use crate::join_token::{self, JoinTokenError, NewJoinToken};
use crate::jwt_keys::JwtSigner;
use crate::metrics::Metrics;
use crate::store::{AgentRecord, EntryFilter, Store, StoreError};

/// Everything that can go wrong in a CA operation. The admin API maps each
/// variant to one gRPC status in one place (`admin::status`).
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
    /// Any other invalid request.
    #[error("{0}")]
    InvalidArgument(String),
}

/// The running CA: configuration, database, current signing authority.
pub struct Ca {
    /// The configuration it was started with.
    pub config: CaConfig,
    /// Its trust domain.
    pub trust_domain: TrustDomain,
    /// Its database.
    pub store: Store,
    /// Its metrics.
    pub metrics: Metrics,
    /// Where it reads the time (the system's; tests drive a manual one).
    pub clock: Clock,
    authority: RwLock<Arc<Authority>>,
    jwt_signer: RwLock<Arc<JwtSigner>>,
    /// This replica's ID (owner of its key files).
    replica: String,
    /// Bumped whenever entries, agents or the bundle change; sync streams
    /// to agents wake on it.
    changes: tokio::sync::watch::Sender<u64>,
}

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
        let authority =
            Authority::load_or_create(&store, &config, &trust_domain, &replica, now).await?;
        let (active_jwt_key, _) = crate::jwt_keys::rotate(&store, &config, &replica, now).await?;
        let jwt_signer = crate::jwt_keys::load(&active_jwt_key, &config)?;
        let ca = Arc::new(Ca {
            metrics: Metrics::new(),
            clock,
            authority: RwLock::new(Arc::new(authority)),
            jwt_signer: RwLock::new(Arc::new(jwt_signer)),
            replica,
            changes: tokio::sync::watch::channel(0).0,
            config,
            trust_domain,
            store,
        });
        let bundle = ca.bundle().await?;
        ca.authority().self_test(&bundle, now)?;
        ca.metrics
            .set_ca_expiry(unix_seconds(ca.authority().not_after));
        Ok(ca)
    }

    /// The time now, Unix seconds.
    fn now_secs(&self) -> i64 {
        unix_seconds(self.clock.now())
    }

    /// The signing authority in force.
    pub fn authority(&self) -> Arc<Authority> {
        match self.authority.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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

    /// Moves JWT key rotation forward to the clock's now (see
    /// [`crate::jwt_keys`]); agents are told when the bundle changed.
    pub async fn rotate_jwt_keys(&self) -> Result<(), CaError> {
        let (active, bundle_changed) =
            crate::jwt_keys::rotate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        // The key file is read only when another key takes over.
        if active.kid != self.jwt_signer().kid {
            let signer = crate::jwt_keys::load(&active, &self.config)?;
            match self.jwt_signer.write() {
                Ok(mut guard) => *guard = Arc::new(signer),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(signer),
            }
        }
        if bundle_changed {
            self.notify_change();
        }
        Ok(())
    }

    /// Signs a JWT-SVID for `spiffe_id` and `audience`, from the clock's
    /// now, living `ttl_secs` (0: the configured default) but never past
    /// the signing key.
    pub fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl_secs: u64,
    ) -> Result<MintedJwt, CaError> {
        let now = self.clock.now();
        let signer = self.jwt_signer();
        let ttl = if ttl_secs == 0 {
            self.config.default_jwt_svid_ttl
        } else {
            ttl_secs
        };
        let expires = (now + Duration::from_secs(ttl)).min(signer.not_after);
        if expires <= now {
            return Err(CaError::Authority(AuthorityError::Inconsistent(
                "the JWT signing key has expired; rotation is behind".into(),
            )));
        }
        let claims = jwt_svid_claims(spiffe_id, audience, now, expires, self.config.jwt_issuer());
        let token = signer
            .key()
            .sign(&signer.kid, &claims)
            .map_err(|e| CaError::Authority(AuthorityError::Inconsistent(e.to_string())))?;
        self.metrics.jwt_svids_issued.inc();
        Ok(MintedJwt {
            token,
            issued_at: unix_seconds(now),
            expires_at: unix_seconds(expires),
        })
    }

    /// The trust bundle as published now.
    pub async fn bundle(&self) -> Result<TrustBundle, CaError> {
        let now = unix_seconds(self.clock.now());
        let (certs, sequence) = self.store.bundle(now).await?;
        let jwt_authorities = self
            .store
            .jwt_keys(now)
            .await?
            .iter()
            .map(|k| JwtAuthority::from_spki_der(&k.kid, &k.public_key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BundleError::from)?;
        let mut bundle = TrustBundle::new(
            self.trust_domain.clone(),
            certs.into_iter().map(CertificateDer::from).collect(),
        )?
        .with_jwt_authorities(jwt_authorities);
        bundle.sequence = sequence;
        bundle.refresh_hint_secs = Some(self.config.bundle_refresh_hint);
        Ok(bundle)
    }

    /// Tells every agent sync stream to re-read its entries.
    pub fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on every [`Ca::notify_change`].
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Validates and stores a new entry.
    pub async fn create_entry(&self, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.create_entry(&spec, self.now_secs()).await?;
        self.notify_change();
        Ok(entry)
    }

    /// Validates and applies an update to an entry.
    pub async fn update_entry(&self, id: &str, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.update_entry(id, &spec, self.now_secs()).await?;
        self.notify_change();
        Ok(entry)
    }

    /// Deletes an entry.
    pub async fn delete_entry(&self, id: &str) -> Result<(), CaError> {
        self.store.delete_entry(id).await?;
        self.notify_change();
        Ok(())
    }

    fn validate_entry(&self, input: &EntryInput) -> Result<EntrySpec, CaError> {
        Ok(input.validate(
            &self.trust_domain,
            self.config.max_ttl(),
            Duration::from_secs(self.config.max_jwt_svid_ttl),
        )?)
    }

    /// Lists entries.
    pub async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, CaError> {
        Ok(self.store.list_entries(filter).await?)
    }

    /// Mints a join token (`ttl` seconds, 0 for the configured default).
    pub async fn create_join_token(
        &self,
        ttl: i64,
        node_name: Option<&str>,
    ) -> Result<NewJoinToken, CaError> {
        if ttl < 0 {
            return Err(CaError::InvalidArgument(
                "token TTL must not be negative".into(),
            ));
        }
        let ttl = if ttl == 0 {
            self.config.join_token_ttl as i64
        } else {
            ttl
        };
        let token = join_token::generate()?;
        let agent_id = join_token::agent_id(&self.trust_domain, node_name, &token)?;
        let now = self.now_secs();
        let expires_at = now + ttl;
        self.store
            .insert_join_token(
                &join_token::hash(&token),
                agent_id.as_str(),
                expires_at,
                now,
            )
            .await?;
        self.metrics.join_tokens_created.inc();
        tracing::info!(agent_id = %agent_id, expires_at, "join token created");
        Ok(NewJoinToken {
            token,
            agent_id,
            expires_at,
        })
    }

    /// Lists agents.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, CaError> {
        Ok(self.store.list_agents().await?)
    }

    /// Bans an agent.
    pub async fn ban_agent(&self, spiffe_id: &str) -> Result<AgentRecord, CaError> {
        let agent = self.store.ban_agent(spiffe_id, self.now_secs()).await?;
        self.notify_change();
        tracing::warn!(agent_id = spiffe_id, "agent banned");
        Ok(agent)
    }

    /// Evicts an agent.
    pub async fn evict_agent(&self, spiffe_id: &str) -> Result<(), CaError> {
        self.store.delete_agent(spiffe_id).await?;
        self.notify_change();
        tracing::warn!(agent_id = spiffe_id, "agent evicted");
        Ok(())
    }

    /// Signs the SVID an entry describes from a CSR.
    pub fn sign_for_entry(&self, csr_der: &[u8], entry: &EntrySpec) -> Result<IssuedSvid, CaError> {
        let result = sign_for_entry(
            &self.authority(),
            csr_der,
            entry,
            self.config.default_ttl(),
            self.clock.now(),
        );
        match &result {
            Ok(_) => {
                self.metrics.svids_issued.inc();
            }
            Err(e) => self.metrics.issuance_failed(e),
        }
        Ok(result?)
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

/// A signed JWT-SVID and its times (Unix seconds).
pub struct MintedJwt {
    /// Compact JWS.
    pub token: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
