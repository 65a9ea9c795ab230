//! The CA's signing keys as operations: rotation of both kinds, the
//! operator's prepare/activate/taint/revoke, and the trust bundle they
//! publish. Each kind is a [`crate::keys::slot::KeySlot`]; what follows is
//! written once for both.

use crate::keys::authority::Authority;
use crate::keys::jwt::JwtSlot;
use crate::keys::slot;
use crate::keys::x509::X509Slot;
use crate::store::{CaKeyRecord, JwtKeyRecord, StoreError};
use signet_identity::TrustBundle;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

use super::{load_bundle, AnyKey, Ca, CaError, KeyKind, PublishedBundle};

impl Ca {
    /// This replica's X.509 keys.
    pub(crate) fn x509_slot(&self) -> X509Slot<'_> {
        X509Slot {
            store: &self.store,
            config: &self.config,
            trust_domain: &self.trust_domain,
            replica: &self.replica,
        }
    }

    /// This replica's JWT keys.
    pub(crate) fn jwt_slot(&self) -> JwtSlot<'_> {
        JwtSlot {
            store: &self.store,
            config: &self.config,
            replica: &self.replica,
        }
    }

    /// How often rotation of `kind` should be looked at.
    pub fn rotation_interval(&self, kind: KeyKind) -> std::time::Duration {
        let lifetime = match kind {
            KeyKind::X509 => self.config.ca_ttl,
            KeyKind::Jwt => self.config.jwt_key_ttl,
        };
        crate::keys::rotation::Schedule::for_lifetime(lifetime).check_interval()
    }

    /// Moves rotation of `kind` forward to the clock's now (see
    /// `keys::rotation`): a newly active key signs from here on,
    /// and agents are told when the bundle changed.
    pub async fn rotate_keys(&self, kind: KeyKind) -> Result<(), CaError> {
        let now = self.clock.now();
        let bundle_changed = match kind {
            KeyKind::X509 => {
                let (active, changed) = slot::rotate(&self.x509_slot(), now).await?;
                self.use_key(&AnyKey::X509(active))?;
                changed
            }
            KeyKind::Jwt => {
                let (active, changed) = slot::rotate(&self.jwt_slot(), now).await?;
                self.use_key(&AnyKey::Jwt(active))?;
                changed
            }
        };
        if bundle_changed {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// `signet ca prepare [--kind]`: this replica's next key of `kind`,
    /// published now.
    pub async fn prepare_key(&self, kind: KeyKind) -> Result<AnyKey, CaError> {
        let now = self.clock.now();
        let key = match kind {
            KeyKind::X509 => AnyKey::X509(slot::prepare(&self.x509_slot(), now).await?),
            KeyKind::Jwt => AnyKey::Jwt(slot::prepare(&self.jwt_slot(), now).await?),
        };
        self.applied().await;
        Ok(key)
    }

    /// `signet ca activate [--kind]`: this replica's prepared key of `kind`
    /// signs now.
    pub async fn activate_key(&self, kind: KeyKind) -> Result<AnyKey, CaError> {
        let now = self.clock.now();
        let key = match kind {
            KeyKind::X509 => AnyKey::X509(slot::activate(&self.x509_slot(), now).await?),
            KeyKind::Jwt => AnyKey::Jwt(slot::activate(&self.jwt_slot(), now).await?),
        };
        self.use_key(&key)?;
        Ok(key)
    }

    /// `signet ca taint KEY`: the X.509 or JWT key with this ID; agents
    /// replace what it signed.
    pub async fn taint_key(&self, id: &str) -> Result<AnyKey, CaError> {
        let now = self.clock.now();
        let key = match self.key_kind(id).await? {
            KeyKind::X509 => AnyKey::X509(slot::taint(&self.x509_slot(), id, now).await?),
            KeyKind::Jwt => AnyKey::Jwt(slot::taint(&self.jwt_slot(), id, now).await?),
        };
        self.applied().await;
        Ok(key)
    }

    /// `signet ca revoke KEY [--force]`: the X.509 or JWT key with this ID
    /// leaves the bundle.
    pub async fn revoke_key(&self, id: &str, force: bool) -> Result<AnyKey, CaError> {
        let now = self.clock.now();
        let key = match self.key_kind(id).await? {
            KeyKind::X509 => AnyKey::X509(slot::revoke(&self.x509_slot(), id, force, now).await?),
            KeyKind::Jwt => AnyKey::Jwt(slot::revoke(&self.jwt_slot(), id, force, now).await?),
        };
        self.applied().await;
        Ok(key)
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

    /// Signs with key `active` from now on, if it is not the one of its
    /// kind in use (its file is read only then).
    pub(crate) fn use_key(&self, active: &AnyKey) -> Result<(), CaError> {
        match active {
            AnyKey::X509(key) => self.use_x509_key(key),
            AnyKey::Jwt(key) => self.use_jwt_key(key),
        }
    }

    fn use_jwt_key(&self, active: &JwtKeyRecord) -> Result<(), CaError> {
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

    fn use_x509_key(&self, active: &CaKeyRecord) -> Result<(), CaError> {
        if active.id == self.authority().id {
            return Ok(());
        }
        let authority = Arc::new(Authority::load(active, &self.config.keys_dir())?);
        match self.authority.write() {
            Ok(mut guard) => *guard = authority,
            Err(poisoned) => *poisoned.into_inner() = authority,
        }
        self.metrics.set_ca_expiry(active.journal.not_after);
        self.active_key.send_replace(active.id.clone());
        tracing::info!(key_id = %active.id, not_after = active.journal.not_after, "now signing with CA key");
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

    /// The unexpired signing keys of both kinds at `now` (Unix seconds).
    pub async fn signing_keys(
        &self,
        now: i64,
    ) -> Result<(Vec<CaKeyRecord>, Vec<JwtKeyRecord>), CaError> {
        Ok((
            self.store.ca_keys(now).await?,
            self.store.jwt_keys(now).await?,
        ))
    }
}
