//! One rotation driver for both kinds of signing key. A [`KeySlot`] says
//! what differs between X.509 and JWT keys (how one is made, where its
//! file lives, what revoking it takes out of the bundle); [`rotate`] and
//! the operator's [`prepare`], [`activate`], [`taint`] and [`revoke`] are
//! written once over it, carrying out the pure rules of
//! [`crate::keys::rotation`] on the journal in the database.

use std::path::PathBuf;
use std::time::SystemTime;

use signet_identity::x509_svid::unix_seconds;

use crate::keys::authority::{prepared_meanwhile, AuthorityError};
use crate::keys::rotation::{incident, next_step, RotatingKey, Schedule, Step};
use crate::store::{KeyStatus, KeyTable, Store};

/// What rotation needs of one kind of key on one replica.
pub(crate) trait KeySlot {
    /// The key's record in the database.
    type Record: RotatingKey;
    /// The table its records are in.
    const TABLE: KeyTable;
    /// How rotation names the kind in logs and errors ("CA", "JWT").
    const NAME: &'static str;
    /// States in which a key must have its private key file: a key in one
    /// of them whose file is gone is marked lost before the next step.
    const NEEDS_FILE: &'static [KeyStatus];

    /// The database.
    fn store(&self) -> &Store;
    /// The thresholds of this kind's key lifetime.
    fn schedule(&self) -> Schedule;
    /// The longest an SVID this kind signs may live.
    fn max_svid_ttl(&self) -> i64;
    /// Where the private key of key `id` lives.
    fn key_file(&self, id: &str) -> PathBuf;
    /// This replica's unexpired keys.
    async fn mine(&self, now: i64) -> Result<Vec<Self::Record>, AuthorityError>;
    /// One key by ID, of any replica.
    async fn record(&self, id: &str) -> Result<Self::Record, AuthorityError>;
    /// Makes, files and records a key in state `status`; returns its ID and
    /// whether the bundle changed.
    async fn create(
        &self,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<(String, bool), AuthorityError>;
    /// Before the journal is read: removes what expired; returns whether
    /// the bundle changed.
    async fn prune(&self, now: i64) -> Result<bool, AuthorityError>;
    /// What revoking `key` takes out of the bundle besides the key itself
    /// (the fingerprint of its root certificate), or why it cannot be
    /// revoked here.
    fn revocation(&self, key: &Self::Record) -> Result<Option<String>, AuthorityError>;
}

/// Applies rotation steps until there is nothing to do; returns the active
/// key (to sign with: load it when it is not the one in use) and whether
/// the bundle changed.
pub(crate) async fn rotate<S: KeySlot>(
    slot: &S,
    now: SystemTime,
) -> Result<(S::Record, bool), AuthorityError> {
    let schedule = slot.schedule();
    let now_s = unix_seconds(now);
    let mut changed = slot.prune(now_s).await?;
    // Bounded: each step moves a key forward, and the longest path (lost
    // keys marked, a prepared key activated, the next one prepared) is
    // well under eight.
    for _ in 0..8 {
        let keys = slot.mine(now_s).await?;
        if mark_lost(slot, &keys, now_s).await? {
            continue;
        }
        match next_step(&keys, &schedule, now_s) {
            Step::Wait => {
                return newest_active(keys).map(|k| (k, changed)).ok_or_else(|| {
                    AuthorityError::Inconsistent(format!("no active {} key", S::NAME))
                });
            }
            step @ (Step::CreateActive | Step::Prepare) => {
                let status = if step == Step::CreateActive {
                    KeyStatus::Active
                } else {
                    KeyStatus::Prepared
                };
                let (_, bundle_changed) = slot.create(status, now).await?;
                changed |= bundle_changed;
            }
            Step::Activate { prepared, retiring } => {
                activate_key(slot, &prepared, retiring.as_deref(), now_s).await?;
            }
        }
    }
    Err(AuthorityError::Inconsistent(format!(
        "{} key rotation did not settle; check the {} table",
        S::NAME,
        S::TABLE.name()
    )))
}

/// Marks lost every key of ours in a state that needs its file and has
/// none (it can never sign); whether any was.
async fn mark_lost<S: KeySlot>(
    slot: &S,
    keys: &[S::Record],
    now: i64,
) -> Result<bool, AuthorityError> {
    let mut lost_one = false;
    for k in keys {
        let status = k.journal().status;
        if S::NEEDS_FILE.contains(&status) && !slot.key_file(k.id()).exists() {
            tracing::warn!(kind = S::NAME, key_id = %k.id(), status = status.as_str(), "signing key file is missing: key marked lost (it stays published until it expires); another is made");
            slot.store()
                .set_key_status(S::TABLE, k.id(), status, KeyStatus::Lost, now)
                .await?;
            lost_one = true;
        }
    }
    Ok(lost_one)
}

fn newest_active<K: RotatingKey>(keys: Vec<K>) -> Option<K> {
    keys.into_iter()
        .filter(|k| k.journal().status == KeyStatus::Active)
        .max_by_key(|k| k.journal().not_after)
}

async fn activate_key<S: KeySlot>(
    slot: &S,
    prepared: &str,
    retiring: Option<&str>,
    now: i64,
) -> Result<(), AuthorityError> {
    let store = slot.store();
    if let Some(old) = retiring {
        store
            .set_key_status(S::TABLE, old, KeyStatus::Active, KeyStatus::Old, now)
            .await?;
    }
    store
        .set_key_status(
            S::TABLE,
            prepared,
            KeyStatus::Prepared,
            KeyStatus::Active,
            now,
        )
        .await?;
    tracing::info!(kind = S::NAME, key_id = %prepared, retired = retiring.unwrap_or(""), "signing key activated");
    Ok(())
}

/// `signet ca prepare [--kind]`: makes and publishes this replica's next
/// key now, ahead of the schedule. Refused when one is already prepared.
pub(crate) async fn prepare<S: KeySlot>(
    slot: &S,
    now: SystemTime,
) -> Result<S::Record, AuthorityError> {
    let keys = slot.mine(unix_seconds(now)).await?;
    incident::may_prepare(&keys).map_err(AuthorityError::Refused)?;
    let (id, _) = slot
        .create(KeyStatus::Prepared, now)
        .await
        .map_err(prepared_meanwhile)?;
    slot.record(&id).await
}

/// `signet ca activate [--kind]`: the prepared key of this replica signs
/// from now on, ahead of the schedule, once published for the grace
/// period; the active key becomes old.
pub(crate) async fn activate<S: KeySlot>(
    slot: &S,
    now: SystemTime,
) -> Result<S::Record, AuthorityError> {
    let now_s = unix_seconds(now);
    let keys = slot.mine(now_s).await?;
    let prepared =
        incident::to_activate(&keys, &slot.schedule(), now_s).map_err(AuthorityError::Refused)?;
    let path = slot.key_file(prepared.id());
    if !path.exists() {
        return Err(AuthorityError::MissingKey {
            id: prepared.id().to_owned(),
            path,
        });
    }
    let retiring = keys
        .iter()
        .find(|k| k.journal().status == KeyStatus::Active)
        .map(|k| k.id());
    activate_key(slot, prepared.id(), retiring, now_s).await?;
    slot.record(prepared.id()).await
}

/// `signet ca taint KEY`: marks a key that no longer signs as compromised;
/// agents replace at once everything it signed.
pub(crate) async fn taint<S: KeySlot>(
    slot: &S,
    id: &str,
    now: SystemTime,
) -> Result<S::Record, AuthorityError> {
    let key = slot.record(id).await?;
    incident::may_taint(&key).map_err(AuthorityError::Refused)?;
    slot.store()
        .taint_key(S::TABLE, id, unix_seconds(now))
        .await?;
    tracing::warn!(kind = S::NAME, key_id = %id, "signing key tainted: agents replace what it signed");
    slot.record(id).await
}

/// `signet ca revoke KEY [--force]`: takes a key out of the bundle; what
/// it signed stops verifying. Refused for the active key, for what the
/// slot cannot revoke, and, without `force`, while what it signed may
/// still be valid.
pub(crate) async fn revoke<S: KeySlot>(
    slot: &S,
    id: &str,
    force: bool,
    now: SystemTime,
) -> Result<S::Record, AuthorityError> {
    let now_s = unix_seconds(now);
    let key = slot.record(id).await?;
    incident::may_revoke(&key, slot.max_svid_ttl(), force, now_s)
        .map_err(AuthorityError::Refused)?;
    let root = slot.revocation(&key)?;
    slot.store()
        .revoke_key(S::TABLE, id, root.as_deref(), now_s)
        .await?;
    tracing::warn!(kind = S::NAME, key_id = %id, forced = force, "signing key revoked: out of the bundle");
    slot.record(id).await
}
