//! The CA's signing keys as operations: rotation of both kinds, the
//! operator's prepare/activate/taint/revoke, and the trust bundle they
//! publish.

use crate::keys::authority::Authority;
use crate::store::StoreError;
use signet_identity::TrustBundle;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

use super::{load_bundle, AnyKey, Ca, CaError, KeyKind, PublishedBundle};

impl Ca {
    /// Moves JWT key rotation forward to the clock's now (see
    /// [`crate::keys::jwt`]); agents are told when the bundle changed.
    pub async fn rotate_jwt_keys(&self) -> Result<(), CaError> {
        let (active, bundle_changed) =
            crate::keys::jwt::rotate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.use_jwt_key(&active)?;
        if bundle_changed {
            self.catch_up().await?;
        }
        Ok(())
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
    /// [`crate::keys::x509`]); a newly active key signs from here on.
    pub async fn rotate_x509_keys(&self) -> Result<(), CaError> {
        let (active, bundle_changed) = crate::keys::x509::rotate(
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
    pub(crate) fn use_jwt_key(&self, active: &crate::store::JwtKeyRecord) -> Result<(), CaError> {
        if active.kid == self.jwt_signer().kid {
            return Ok(());
        }
        let signer = Arc::new(crate::keys::jwt::load(active, &self.config)?);
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
            crate::keys::jwt::prepare(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.applied().await;
        Ok(key)
    }

    /// `signet ca activate --kind jwt`: the prepared JWT key signs now.
    pub async fn activate_jwt_key(&self) -> Result<crate::store::JwtKeyRecord, CaError> {
        let key =
            crate::keys::jwt::activate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.use_jwt_key(&key)?;
        Ok(key)
    }

    /// `signet ca taint KEY`: the X.509 or JWT key with this ID.
    pub async fn taint_key(&self, id: &str) -> Result<AnyKey, CaError> {
        Ok(match self.key_kind(id).await? {
            KeyKind::X509 => AnyKey::X509(self.taint_x509_key(id).await?),
            KeyKind::Jwt => {
                let key = crate::keys::jwt::taint(&self.store, id, self.clock.now()).await?;
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
                let key = crate::keys::jwt::revoke(
                    &self.store,
                    &self.config,
                    id,
                    force,
                    self.clock.now(),
                )
                .await?;
                self.applied().await;
                AnyKey::Jwt(key)
            }
        })
    }

    /// Whether `id` names an X.509 or a JWT key (NOT_FOUND: neither).
    pub(crate) async fn key_kind(&self, id: &str) -> Result<KeyKind, CaError> {
        match self.store.ca_key(id).await {
            Ok(_) => return Ok(KeyKind::X509),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.jwt_key(id).await?;
        Ok(KeyKind::Jwt)
    }

    /// Signs with key `active` from now on, if it is not the one in use.
    pub(crate) fn use_x509_key(&self, active: &crate::store::CaKeyRecord) -> Result<(), CaError> {
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
        let key = crate::keys::x509::prepare(
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
            crate::keys::x509::activate(&self.store, &self.config, &self.replica, self.clock.now())
                .await?;
        self.use_x509_key(&key)?;
        Ok(key)
    }

    /// `signet ca taint KEY`: agents replace what the key signed.
    pub async fn taint_x509_key(&self, id: &str) -> Result<crate::store::CaKeyRecord, CaError> {
        let key = crate::keys::x509::taint(&self.store, id, self.clock.now()).await?;
        self.applied().await;
        Ok(key)
    }

    /// `signet ca revoke KEY`: the key leaves the bundle.
    pub async fn revoke_x509_key(
        &self,
        id: &str,
        force: bool,
    ) -> Result<crate::store::CaKeyRecord, CaError> {
        let key = crate::keys::x509::revoke(&self.store, &self.config, id, force, self.clock.now())
            .await?;
        self.applied().await;
        Ok(key)
    }

    /// The unexpired signing keys of both kinds at `now` (Unix seconds).
    pub async fn signing_keys(
        &self,
        now: i64,
    ) -> Result<
        (
            Vec<crate::store::CaKeyRecord>,
            Vec<crate::store::JwtKeyRecord>,
        ),
        CaError,
    > {
        Ok((
            self.store.ca_keys(now).await?,
            self.store.jwt_keys(now).await?,
        ))
    }
}
