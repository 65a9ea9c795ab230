//! This replica's X.509 signing keys as a [`KeySlot`]: rotation on the
//! journal of [`crate::keys::rotation`] with `L` = `ca_ttl`, driven by
//! [`crate::keys::slot`] like the JWT keys.
//!
//! In self-signed mode each key is its own root, so a prepared key's
//! certificate enters the bundle when it is made, long before it signs.
//! Under an upstream authority each key is an intermediate the upstream
//! signed; the bundle holds the upstream roots and does not change.

use std::path::PathBuf;
use std::time::SystemTime;

use signet_identity::TrustDomain;

use crate::config::CaConfig;
use crate::keys::authority::{self, fingerprint, key_path, Authority, AuthorityError};
use crate::keys::rotation::Schedule;
use crate::keys::slot::{self, KeySlot};
use crate::store::{CaKeyRecord, KeyStatus, KeyTable, Store};

/// One replica's X.509 signing keys.
pub(crate) struct X509Slot<'a> {
    /// The database.
    pub store: &'a Store,
    /// The CA's configuration (key lifetime, mode, data dir).
    pub config: &'a CaConfig,
    /// The trust domain the keys sign for.
    pub trust_domain: &'a TrustDomain,
    /// This replica ([`crate::keys::authority::replica_id`]).
    pub replica: &'a str,
}

/// Loads this replica's active key, after letting rotation make one
/// (first start) or move the journal on.
pub(crate) async fn load_or_create(
    slot: &X509Slot<'_>,
    now: SystemTime,
) -> Result<Authority, AuthorityError> {
    authority::check_trust_domain(slot.store, slot.trust_domain).await?;
    let keys_dir = slot.config.keys_dir();
    authority::create_private_dir(&keys_dir)?;
    authority::reconcile(slot.store, slot.config, slot.replica, now).await?;
    let (active, _) = slot::rotate(slot, now).await?;
    let authority = Authority::load(&active, &keys_dir)?;
    tracing::info!(key_id = %active.id, not_after = active.journal.not_after, self_signed = active.self_signed, "CA signing key loaded");
    Ok(authority)
}

impl KeySlot for X509Slot<'_> {
    type Record = CaKeyRecord;
    const TABLE: KeyTable = KeyTable::X509;
    const NAME: &'static str = "CA";
    // An active key's missing file stops the CA at start instead
    // ([`authority::reconcile`]) unless the operator asked to replace it.
    const NEEDS_FILE: &'static [KeyStatus] = &[KeyStatus::Prepared];

    fn store(&self) -> &Store {
        self.store
    }

    fn schedule(&self) -> Schedule {
        Schedule::for_lifetime(self.config.ca_ttl)
    }

    fn max_svid_ttl(&self) -> i64 {
        self.config.max_x509_svid_ttl as i64
    }

    fn key_file(&self, id: &str) -> PathBuf {
        key_path(&self.config.keys_dir(), id)
    }

    /// Of the configured mode (self-signed or upstream) only.
    async fn mine(&self, now: i64) -> Result<Vec<CaKeyRecord>, AuthorityError> {
        let upstream = self.config.upstream_cert.is_some();
        Ok(self
            .store
            .ca_keys(now)
            .await?
            .into_iter()
            .filter(|k| k.replica.as_deref() == Some(self.replica) && k.self_signed != upstream)
            .collect())
    }

    async fn record(&self, id: &str) -> Result<CaKeyRecord, AuthorityError> {
        Ok(self.store.ca_key(id).await?)
    }

    /// The bundle changes in self-signed mode only (under an upstream it
    /// holds the upstream's roots).
    async fn create(
        &self,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<(String, bool), AuthorityError> {
        let key = Authority::create_key(
            self.store,
            self.config,
            self.trust_domain,
            self.replica,
            status,
            now,
        )
        .await?;
        Ok((key.id, self.config.upstream_cert.is_none()))
    }

    /// Expired certificates drop out of the bundle by their own date.
    async fn prune(&self, _now: i64) -> Result<bool, AuthorityError> {
        Ok(false)
    }

    /// Refused under an upstream authority: the bundle holds the upstream
    /// roots, so the intermediate is revoked there.
    fn revocation(&self, key: &CaKeyRecord) -> Result<Option<String>, AuthorityError> {
        if !key.self_signed {
            return Err(AuthorityError::Refused(format!(
                "key {} is an intermediate under the upstream authority: the bundle holds the upstream roots, so revoke the intermediate at the upstream CA",
                key.id
            )));
        }
        let cert = rustls_pki_types::CertificateDer::from(key.cert_der.clone());
        Ok(Some(fingerprint(&cert)))
    }
}
