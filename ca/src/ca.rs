//! The CA's shared state and its operations, independent of any transport:
//! the admin API (and, next, the node API) are thin layers over [`Ca`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use signet_identity::clock::Clock;
use signet_identity::jwt_svid::{jwt_svid_claims, JwtAuthority};
use signet_identity::x509_svid::unix_seconds;
use signet_identity::{BundleError, CertificateDer, SpiffeId, TrustBundle, TrustDomain};

use crate::authority::{create_private_dir, replica_id, Authority, AuthorityError};
use crate::config::{CaConfig, ConfigError};
use crate::endpoint_publish::{check_update, Checked};
use crate::endpoint_registry::EndpointRegistry;
use crate::entry::{Entry, EntryError, EntryInput, EntrySpec};
use crate::entry_cache::{AgentVersion, Catchup, EntryCache};
use crate::issuance::{sign_for_entry, IssueError, IssuedSvid};
use crate::join_token::{self, JoinTokenError, NewJoinToken};
use crate::jwt_keys::JwtSigner;
use crate::metrics::Metrics;
use crate::store::{
    AgentRecord, ChangeKind, EndpointRecord, EntryFilter, PublishSession, Store, StoreError,
};

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
        let authority =
            Authority::load_or_create(&store, &config, &trust_domain, &replica, now).await?;
        let (active_jwt_key, _) = crate::jwt_keys::rotate(&store, &config, &replica, now).await?;
        let jwt_signer = crate::jwt_keys::load(&active_jwt_key, &config)?;
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
        self.use_jwt_key(&active)?;
        if bundle_changed {
            self.catch_up().await?;
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

    /// The trust bundle as published now (read again first when one of its
    /// authorities has expired by the clock).
    pub async fn bundle(&self) -> Result<TrustBundle, CaError> {
        if self.now_secs() >= self.bundle_until.load(Ordering::Relaxed) {
            // The database may be away; what is published stays usable
            // (verifiers check validity themselves) and the feed retries.
            if let Err(e) = self.refresh_bundle().await {
                tracing::warn!(error = %e, "cannot re-read the trust bundle; serving the last one");
            }
        }
        Ok(self.bundle.borrow().bundle.clone())
    }

    /// Reads the bundle from the database and publishes it if it changed.
    pub async fn refresh_bundle(&self) -> Result<(), CaError> {
        let (bundle, until) = load_bundle(
            &self.store,
            &self.config,
            &self.trust_domain,
            self.clock.now(),
        )
        .await?;
        self.bundle_until.store(until, Ordering::Relaxed);
        self.bundle.send_if_modified(|cur| {
            let changed = **cur != bundle;
            if changed {
                *cur = Arc::new(bundle);
            }
            changed
        });
        Ok(())
    }

    /// When the bundle must next be read again (an authority in it
    /// expires), Unix seconds.
    pub fn bundle_valid_until(&self) -> i64 {
        self.bundle_until.load(Ordering::Relaxed)
    }

    /// A receiver that changes whenever the published bundle (or the set of
    /// tainted keys) does.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<PublishedBundle>> {
        self.bundle.subscribe()
    }

    /// A receiver that changes whenever this replica starts signing with
    /// another X.509 key.
    pub fn subscribe_active_key(&self) -> watch::Receiver<String> {
        self.active_key.subscribe()
    }

    /// Moves X.509 key rotation forward to the clock's now (see
    /// [`crate::x509_keys`]); a newly active key signs from here on.
    pub async fn rotate_x509_keys(&self) -> Result<(), CaError> {
        let (active, bundle_changed) = crate::x509_keys::rotate(
            &self.store,
            &self.config,
            &self.trust_domain,
            &self.replica,
            self.clock.now(),
        )
        .await?;
        self.use_x509_key(&active)?;
        if bundle_changed {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Signs JWT-SVIDs with key `active` from now on, if it is not the one
    /// in use (its file is read only then).
    fn use_jwt_key(&self, active: &crate::store::JwtKeyRecord) -> Result<(), CaError> {
        if active.kid == self.jwt_signer().kid {
            return Ok(());
        }
        let signer = Arc::new(crate::jwt_keys::load(active, &self.config)?);
        match self.jwt_signer.write() {
            Ok(mut guard) => *guard = signer,
            Err(poisoned) => *poisoned.into_inner() = signer,
        }
        Ok(())
    }

    /// `signet ca prepare --kind jwt`: this replica's next JWT key,
    /// published now.
    pub async fn prepare_jwt_key(&self) -> Result<crate::store::JwtKeyRecord, CaError> {
        let key =
            crate::jwt_keys::prepare(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.applied().await;
        Ok(key)
    }

    /// `signet ca activate --kind jwt`: the prepared JWT key signs now.
    pub async fn activate_jwt_key(&self) -> Result<crate::store::JwtKeyRecord, CaError> {
        let key =
            crate::jwt_keys::activate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.use_jwt_key(&key)?;
        Ok(key)
    }

    /// `signet ca taint KEY`: the X.509 or JWT key with this ID.
    pub async fn taint_key(&self, id: &str) -> Result<AnyKey, CaError> {
        Ok(match self.key_kind(id).await? {
            KeyKind::X509 => AnyKey::X509(self.taint_x509_key(id).await?),
            KeyKind::Jwt => {
                let key = crate::jwt_keys::taint(&self.store, id, self.clock.now()).await?;
                self.applied().await;
                AnyKey::Jwt(key)
            }
        })
    }

    /// `signet ca revoke KEY [--force]`: the X.509 or JWT key with this ID.
    pub async fn revoke_key(&self, id: &str, force: bool) -> Result<AnyKey, CaError> {
        Ok(match self.key_kind(id).await? {
            KeyKind::X509 => AnyKey::X509(self.revoke_x509_key(id, force).await?),
            KeyKind::Jwt => {
                let key =
                    crate::jwt_keys::revoke(&self.store, &self.config, id, force, self.clock.now())
                        .await?;
                self.applied().await;
                AnyKey::Jwt(key)
            }
        })
    }

    /// Whether `id` names an X.509 or a JWT key (NOT_FOUND: neither).
    async fn key_kind(&self, id: &str) -> Result<KeyKind, CaError> {
        match self.store.ca_key(id).await {
            Ok(_) => return Ok(KeyKind::X509),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.jwt_key(id).await?;
        Ok(KeyKind::Jwt)
    }

    /// Signs with key `active` from now on, if it is not the one in use.
    fn use_x509_key(&self, active: &crate::store::CaKeyRecord) -> Result<(), CaError> {
        if active.id == self.authority().id {
            return Ok(());
        }
        let authority = Arc::new(Authority::load(active, &self.config.keys_dir())?);
        match self.authority.write() {
            Ok(mut guard) => *guard = authority,
            Err(poisoned) => *poisoned.into_inner() = authority,
        }
        self.metrics.set_ca_expiry(active.not_after);
        self.active_key.send_replace(active.id.clone());
        tracing::info!(key_id = %active.id, not_after = active.not_after, "now signing with CA key");
        Ok(())
    }

    /// `signet ca prepare`: this replica's next X.509 key, published now.
    pub async fn prepare_x509_key(&self) -> Result<crate::store::CaKeyRecord, CaError> {
        let key = crate::x509_keys::prepare(
            &self.store,
            &self.config,
            &self.trust_domain,
            &self.replica,
            self.clock.now(),
        )
        .await?;
        self.applied().await;
        Ok(key)
    }

    /// `signet ca activate`: this replica's prepared X.509 key signs now.
    pub async fn activate_x509_key(&self) -> Result<crate::store::CaKeyRecord, CaError> {
        let key =
            crate::x509_keys::activate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.use_x509_key(&key)?;
        Ok(key)
    }

    /// `signet ca taint KEY`: agents replace what the key signed.
    pub async fn taint_x509_key(&self, id: &str) -> Result<crate::store::CaKeyRecord, CaError> {
        let key = crate::x509_keys::taint(&self.store, id, self.clock.now()).await?;
        self.applied().await;
        Ok(key)
    }

    /// `signet ca revoke KEY`: the key leaves the bundle.
    pub async fn revoke_x509_key(
        &self,
        id: &str,
        force: bool,
    ) -> Result<crate::store::CaKeyRecord, CaError> {
        let key = crate::x509_keys::revoke(&self.store, &self.config, id, force, self.clock.now())
            .await?;
        self.applied().await;
        Ok(key)
    }

    /// Applies every change in the feed this replica has not seen: one
    /// query when there is none. Called after each local write and by the
    /// change feed task when another replica wrote.
    pub async fn catch_up(&self) -> Result<(), CaError> {
        let _reader = self.feed_reader.lock().await;
        loop {
            let after = self.read_cache(EntryCache::revision);
            let rows = self.store.changes_since(after, FEED_PAGE).await?;
            // Agents whose endpoints changed (a ban or eviction withdraws
            // them too): read before anything is applied, so a failed read
            // leaves the whole page to the next try.
            let mut agents: Vec<&str> = rows
                .iter()
                .filter(|r| matches!(r.kind, ChangeKind::Endpoints | ChangeKind::Agent))
                .map(|r| r.parent_id.as_str())
                .collect();
            agents.sort_unstable();
            agents.dedup();
            let mut endpoints = Vec::with_capacity(agents.len());
            for agent in agents {
                endpoints.push((agent, self.store.endpoints_of_agent(agent).await?));
            }
            let now = self.now_secs();
            let mut bundle = false;
            self.write_cache(|cache| {
                for row in &rows {
                    bundle |= cache.apply(row, now).bundle;
                }
                self.metrics.set_cache(cache.len(), cache.revision());
            });
            if !endpoints.is_empty() {
                self.write_endpoints(|registry| {
                    for (agent, set) in endpoints {
                        registry.replace_agent(agent, set);
                    }
                    self.metrics.endpoints.set(registry.len() as i64);
                });
            }
            if bundle {
                self.refresh_bundle().await?;
            }
            if (rows.len() as i64) < FEED_PAGE {
                return Ok(());
            }
        }
    }

    /// Reloads every entry when changes this replica never saw were pruned
    /// from the feed (it was cut off for longer than they are kept).
    pub async fn reload_if_behind(&self) -> Result<bool, CaError> {
        let horizon = self.store.changes_horizon().await?;
        if self.read_cache(EntryCache::revision) >= horizon {
            return Ok(false);
        }
        let _reader = self.feed_reader.lock().await;
        let (entries, revision) = self.store.entries_at_revision().await?;
        tracing::warn!(
            revision,
            horizon,
            "this replica missed pruned changes; reloaded every entry (agents get snapshots)"
        );
        let endpoints = self.store.list_endpoints().await?;
        self.write_cache(|cache| cache.reload(entries, revision));
        self.write_endpoints(|registry| registry.reload(endpoints));
        drop(_reader);
        self.refresh_bundle().await?;
        Ok(true)
    }

    /// Forgets old tombstones and unused agent views of the entry cache.
    pub fn prune_cache(&self) {
        let now = self.now_secs();
        self.write_cache(|cache| cache.prune(now));
    }

    /// What agent `agent_id`, having seen revision `known`, needs, and the
    /// revision that brings it to.
    pub fn entry_catchup(&self, agent_id: &str, known: Option<i64>) -> (Catchup, i64) {
        self.read_cache(|cache| (cache.since(agent_id, known), cache.revision()))
    }

    /// A receiver that changes whenever `agent_id`'s entries or standing do.
    pub fn subscribe_agent(&self, agent_id: &str) -> watch::Receiver<AgentVersion> {
        self.write_cache(|cache| cache.subscribe(agent_id))
    }

    /// The revision this replica's cache is at.
    pub fn revision(&self) -> i64 {
        self.read_cache(EntryCache::revision)
    }

    /// An entry from the cache, or from the database when the cache does
    /// not have it (yet).
    pub async fn entry(&self, id: &str) -> Result<Arc<Entry>, CaError> {
        if let Some(e) = self.read_cache(|c| c.entry(id)) {
            return Ok(e);
        }
        Ok(Arc::new(self.store.get_entry(id).await?))
    }

    fn read_cache<T>(&self, f: impl FnOnce(&EntryCache) -> T) -> T {
        match self.cache.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write_cache<T>(&self, f: impl FnOnce(&mut EntryCache) -> T) -> T {
        match self.cache.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn write_endpoints<T>(&self, f: impl FnOnce(&mut EndpointRegistry) -> T) -> T {
        match self.endpoints.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn read_endpoints<T>(&self, f: impl FnOnce(&EndpointRegistry) -> T) -> T {
        match self.endpoints.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// The endpoints of `spiffe_id`, or all of them, from memory.
    pub fn endpoints(&self, spiffe_id: Option<&str>) -> Vec<EndpointRecord> {
        self.read_endpoints(|r| match spiffe_id {
            Some(id) => r.of(id),
            None => r.all(),
        })
    }

    /// A receiver that changes whenever `spiffe_id`'s endpoints do.
    pub fn subscribe_endpoints(&self, spiffe_id: &str) -> watch::Receiver<u64> {
        self.write_endpoints(|r| r.subscribe(spiffe_id))
    }

    /// Checks and publishes agent `agent_id`'s whole set of endpoints
    /// (connected from `peer_ip`, through `session`): what was published and
    /// what was refused.
    pub async fn publish_endpoints(
        &self,
        agent_id: &str,
        peer_ip: Option<std::net::IpAddr>,
        session: &PublishSession,
        endpoints: Vec<signet_proto::mesh::Endpoint>,
    ) -> Result<Checked, CaError> {
        let mut checked = self.check_endpoints(agent_id, peer_ip, endpoints);
        self.store
            .replace_endpoints(agent_id, &checked.accepted, session, self.now_secs())
            .await?;
        self.applied().await;
        // As stored: with the registration times kept from before.
        let stored = self.store.endpoints_of_agent(agent_id).await?;
        checked.accepted = stored;
        Ok(checked)
    }

    /// What of `endpoints` agent `agent_id` (connected from `peer_ip`) may
    /// publish under its entries now, and what not and why; nothing stored.
    pub fn check_endpoints(
        &self,
        agent_id: &str,
        peer_ip: Option<std::net::IpAddr>,
        endpoints: Vec<signet_proto::mesh::Endpoint>,
    ) -> Checked {
        self.read_cache(|cache| {
            check_update(endpoints, agent_id, peer_ip, &self.trust_domain, |id| {
                cache.agent_holds(agent_id, id)
            })
        })
    }

    /// Agent `agent_id`'s publishing stream `session` ended: its endpoints
    /// are marked lost now and withdrawn after the grace period, unless the
    /// agent has published again (to any replica) by then.
    pub async fn endpoints_lost(self: &Arc<Self>, agent_id: &str, session: &str) {
        if let Err(e) = self
            .store
            .mark_endpoints_lost(agent_id, session, self.now_secs())
            .await
        {
            tracing::warn!(agent_id, error = %e, "cannot mark endpoints lost");
        }
        self.applied().await;
        let ca = self.clone();
        let (agent_id, session) = (agent_id.to_owned(), session.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(ca.config.endpoint_grace)).await;
            ca.withdraw_endpoints(&agent_id, &session).await;
        });
    }

    async fn withdraw_endpoints(&self, agent_id: &str, session: &str) {
        match self
            .store
            .withdraw_endpoints(agent_id, session, self.now_secs())
            .await
        {
            Ok(()) => self.applied().await,
            Err(e) => {
                tracing::warn!(agent_id, error = %e, "cannot withdraw endpoints; they are withdrawn when this replica restarts")
            }
        }
    }

    /// At start: the publishing streams this replica held before it
    /// stopped are gone; their endpoints are withdrawn after the grace
    /// period unless their agents publish again.
    pub async fn withdraw_orphaned_endpoints(self: &Arc<Self>) -> Result<(), CaError> {
        for (agent_id, session) in self.store.endpoint_sessions_of(&self.replica).await? {
            self.endpoints_lost(&agent_id, &session).await;
        }
        Ok(())
    }

    /// After a local write: apply it (and anything before it) at once. The
    /// write has committed; a failure here is retried by the feed task.
    async fn applied(&self) {
        if let Err(e) = self.catch_up().await {
            tracing::warn!(error = %e, "cannot read the change feed after a write; the feed task retries");
            self.feed_wake.notify_one();
        }
    }

    /// Validates and stores a new entry.
    pub async fn create_entry(&self, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.create_entry(&spec, self.now_secs()).await?;
        self.applied().await;
        Ok(entry)
    }

    /// Validates and applies an update to an entry.
    pub async fn update_entry(&self, id: &str, input: &EntryInput) -> Result<Entry, CaError> {
        let spec = self.validate_entry(input)?;
        let entry = self.store.update_entry(id, &spec, self.now_secs()).await?;
        self.applied().await;
        Ok(entry)
    }

    /// Deletes an entry.
    pub async fn delete_entry(&self, id: &str) -> Result<(), CaError> {
        self.store.delete_entry(id, self.now_secs()).await?;
        self.applied().await;
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
        if !(0..=crate::join_token::MAX_TTL).contains(&ttl) {
            return Err(CaError::InvalidArgument(format!(
                "token TTL {ttl} s is out of range: give at most {} days (a join token is a bearer secret; mint it when the node is about to start)",
                crate::join_token::MAX_TTL / 86400
            )));
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
        self.applied().await;
        tracing::warn!(agent_id = spiffe_id, "agent banned");
        Ok(agent)
    }

    /// Evicts an agent.
    pub async fn evict_agent(&self, spiffe_id: &str) -> Result<(), CaError> {
        self.store.delete_agent(spiffe_id, self.now_secs()).await?;
        self.applied().await;
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
        .filter(|k| k.tainted)
        .filter_map(|k| signet_identity::x509_svid::subject_key_id(&k.cert_der))
        .collect();
    let (certs, sequence) = store.bundle(now).await?;
    let keys = store.jwt_keys(now).await?;
    let tainted_jwt = keys
        .iter()
        .filter(|k| k.tainted)
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
        .chain(keys.iter().map(|k| k.not_after))
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

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
