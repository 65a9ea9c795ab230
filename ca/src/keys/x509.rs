//! This replica's X.509 signing keys: rotation on the journal of
//! [`crate::keys::rotation`] with `L` = `ca_ttl`, and the operator's incident
//! commands (`signet ca prepare|activate|taint|revoke`).
//!
//! In self-signed mode each key is its own root, so a prepared key's
//! certificate enters the bundle when it is made, long before it signs.
//! Under an upstream authority each key is an intermediate the upstream
//! signed; the bundle holds the upstream roots and does not change.

use std::time::SystemTime;

use signet_identity::x509_svid::unix_seconds;
use signet_identity::TrustDomain;

use crate::config::CaConfig;
use crate::keys::authority::{self, fingerprint, key_path, Authority, AuthorityError};
use crate::keys::rotation::{incident, next_step, Schedule, Step};
use crate::store::{CaKeyRecord, KeyStatus, Store};

/// Loads this replica's active key, after letting rotation make one
/// (first start) or move the journal on ([`rotate`]). `replica` is this
/// replica's ID ([`crate::keys::authority::replica_id`]).
pub(crate) async fn load_or_create(
    store: &Store,
    config: &CaConfig,
    td: &TrustDomain,
    replica: &str,
    now: SystemTime,
) -> Result<Authority, AuthorityError> {
    authority::check_trust_domain(store, td).await?;
    let keys_dir = config.keys_dir();
    authority::create_private_dir(&keys_dir)?;
    authority::reconcile(store, config, replica, now).await?;
    let (active, _) = rotate(store, config, td, replica, now).await?;
    let authority = Authority::load(&active, &keys_dir)?;
    tracing::info!(key_id = %active.id, not_after = active.not_after, self_signed = active.self_signed, "CA signing key loaded");
    Ok(authority)
}

/// This replica's unexpired keys of the configured mode.
async fn mine(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: i64,
) -> Result<Vec<CaKeyRecord>, AuthorityError> {
    let upstream = config.upstream_cert.is_some();
    Ok(store
        .ca_keys(now)
        .await?
        .into_iter()
        .filter(|k| k.replica.as_deref() == Some(replica) && k.self_signed != upstream)
        .collect())
}

/// Applies rotation steps until there is nothing to do; returns the active
/// key (to sign with: [`Authority::load`] it when it is not the one in use)
/// and whether the bundle changed.
pub(crate) async fn rotate(
    store: &Store,
    config: &CaConfig,
    td: &TrustDomain,
    replica: &str,
    now: SystemTime,
) -> Result<(CaKeyRecord, bool), AuthorityError> {
    let schedule = Schedule::for_lifetime(config.ca_ttl);
    let now_s = unix_seconds(now);
    let keys_dir = config.keys_dir();
    let mut changed = false;
    // Bounded: each step moves a key forward (create, prepare, activate).
    for _ in 0..8 {
        let keys = mine(store, config, replica, now_s).await?;
        match next_step(&keys, &schedule, now_s) {
            Step::Wait => {
                let active = keys
                    .into_iter()
                    .filter(|k| k.status == KeyStatus::Active)
                    .max_by_key(|k| k.not_after)
                    .ok_or_else(|| AuthorityError::Inconsistent("no active CA key".into()))?;
                return Ok((active, changed));
            }
            step @ (Step::CreateActive | Step::Prepare) => {
                let status = if step == Step::CreateActive {
                    KeyStatus::Active
                } else {
                    KeyStatus::Prepared
                };
                Authority::create_key(store, config, td, replica, status, now).await?;
                changed |= config.upstream_cert.is_none();
            }
            Step::Activate { prepared, retiring } => {
                if !key_path(&keys_dir, &prepared).exists() {
                    tracing::warn!(key_id = %prepared, "the prepared CA key's file is missing: key marked lost; another is prepared");
                    store
                        .set_ca_key_status(&prepared, KeyStatus::Prepared, KeyStatus::Lost, now_s)
                        .await?;
                    continue;
                }
                activate_key(store, &prepared, retiring.as_deref(), now_s).await?;
            }
        }
    }
    Err(AuthorityError::Inconsistent(
        "CA key rotation did not settle; check the ca_keys table".into(),
    ))
}

async fn activate_key(
    store: &Store,
    prepared: &str,
    retiring: Option<&str>,
    now: i64,
) -> Result<(), AuthorityError> {
    if let Some(old) = retiring {
        store
            .set_ca_key_status(old, KeyStatus::Active, KeyStatus::Old, now)
            .await?;
    }
    store
        .set_ca_key_status(prepared, KeyStatus::Prepared, KeyStatus::Active, now)
        .await?;
    tracing::info!(key_id = %prepared, retired = retiring.unwrap_or(""), "CA signing key activated");
    Ok(())
}

/// `signet ca prepare`: makes and publishes this replica's next key now,
/// ahead of the schedule. Refused when one is already prepared.
pub(crate) async fn prepare(
    store: &Store,
    config: &CaConfig,
    td: &TrustDomain,
    replica: &str,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let keys = mine(store, config, replica, unix_seconds(now)).await?;
    incident::may_prepare(&keys).map_err(AuthorityError::Refused)?;
    Authority::create_key(store, config, td, replica, KeyStatus::Prepared, now)
        .await
        .map_err(crate::keys::authority::prepared_meanwhile)
}

/// `signet ca activate`: the prepared key of this replica signs from now
/// on, ahead of the schedule, once published for the grace period; the
/// active key becomes old.
pub(crate) async fn activate(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let now_s = unix_seconds(now);
    let keys = mine(store, config, replica, now_s).await?;
    let schedule = Schedule::for_lifetime(config.ca_ttl);
    let prepared =
        incident::to_activate(&keys, &schedule, now_s).map_err(AuthorityError::Refused)?;
    let path = key_path(&config.keys_dir(), &prepared.id);
    if !path.exists() {
        return Err(AuthorityError::MissingKey {
            id: prepared.id.clone(),
            path,
        });
    }
    let retiring = keys
        .iter()
        .find(|k| k.status == KeyStatus::Active)
        .map(|k| k.id.as_str());
    activate_key(store, &prepared.id, retiring, now_s).await?;
    Ok(store.ca_key(&prepared.id).await?)
}

/// `signet ca taint KEY`: marks a key that no longer signs as compromised;
/// agents re-sign at once every SVID it signed.
pub(crate) async fn taint(
    store: &Store,
    id: &str,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let key = store.ca_key(id).await?;
    incident::may_taint(&key).map_err(AuthorityError::Refused)?;
    store.taint_ca_key(id, unix_seconds(now)).await?;
    tracing::warn!(key_id = %id, "CA key tainted: agents replace every SVID it signed");
    Ok(store.ca_key(id).await?)
}

/// `signet ca revoke KEY [--force]`: takes a key out of the bundle; what
/// it signed stops verifying. Refused for the active key, under an upstream
/// authority (the bundle holds the upstream's roots: revoke the
/// intermediate there), and, without `force`, while SVIDs it signed may
/// still be valid.
pub(crate) async fn revoke(
    store: &Store,
    config: &CaConfig,
    id: &str,
    force: bool,
    now: SystemTime,
) -> Result<CaKeyRecord, AuthorityError> {
    let now_s = unix_seconds(now);
    let key = store.ca_key(id).await?;
    incident::may_revoke(&key, config.max_x509_svid_ttl as i64, force, now_s)
        .map_err(AuthorityError::Refused)?;
    if !key.self_signed {
        return Err(AuthorityError::Refused(format!(
            "key {id} is an intermediate under the upstream authority: the bundle holds the upstream roots, so revoke the intermediate at the upstream CA"
        )));
    }
    let cert = rustls_pki_types::CertificateDer::from(key.cert_der.clone());
    store
        .revoke_ca_key(id, Some(&fingerprint(&cert)), now_s)
        .await?;
    tracing::warn!(key_id = %id, forced = force, "CA key revoked: out of the bundle");
    Ok(store.ca_key(id).await?)
}
