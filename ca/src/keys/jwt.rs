//! The CA's JWT signing keys and their rotation, apart from the X.509 keys.
//!
//! Each replica signs with its own key; every replica's keys are in the
//! bundle. Keys rotate on the journal of [`crate::keys::rotation`] with `L` =
//! `jwt_key_ttl`: a relying party never sees a token before its key, and no
//! token fails validation because of a rotation.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use signet_identity::jwt_svid::{JwtAlgorithm, JwtSigningKey};
use signet_identity::x509_svid::{from_unix_seconds, unix_seconds};

use crate::config::{CaConfig, JwtKeyType};
use crate::keys::authority::{write_private_file, AuthorityError};
use crate::keys::rotation::{incident, next_step, Schedule, Step};
use crate::registry::join_token::hex;
use crate::store::{JwtKeyRecord, KeyStatus, Store};

/// The key this replica signs JWT-SVIDs with now.
pub struct JwtSigner {
    /// The `kid` its tokens carry.
    pub kid: String,
    key: JwtSigningKey,
    /// Tokens it signs expire no later than this.
    pub not_after: SystemTime,
}

impl JwtSigner {
    /// The private key.
    pub fn key(&self) -> &JwtSigningKey {
        &self.key
    }
}

/// Where the private key of JWT key `kid` lives.
pub(crate) fn key_path(keys_dir: &Path, kid: &str) -> PathBuf {
    keys_dir.join(format!("jwt-{kid}.pk8"))
}

/// Applies rotation steps for `replica` until there is nothing to do, and
/// returns the active key (to sign with; [`load`] it when it is not the one
/// in use) and whether the bundle changed (a key was made or deleted).
pub(crate) async fn rotate(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: SystemTime,
) -> Result<(JwtKeyRecord, bool), AuthorityError> {
    let keys_dir = &config.keys_dir();
    let schedule = Schedule::for_lifetime(config.jwt_key_ttl);
    let now_s = unix_seconds(now);
    let mut changed = store.delete_expired_jwt_keys(now_s).await? > 0;
    // Bounded: each step moves a key forward, and the longest path (lost
    // keys marked, a prepared key activated, the next one prepared) is
    // well under eight.
    for _ in 0..8 {
        let mine: Vec<JwtKeyRecord> = store
            .jwt_keys(now_s)
            .await?
            .into_iter()
            .filter(|k| k.replica == replica)
            .collect();
        // An active or prepared key whose file is gone can never sign.
        let mut lost_one = false;
        for k in &mine {
            let usable = matches!(k.status, KeyStatus::Active | KeyStatus::Prepared);
            if usable && !key_path(keys_dir, &k.kid).exists() {
                tracing::warn!(kid = %k.kid, "JWT signing key file is missing: key marked lost (it stays published until it expires)");
                store
                    .set_jwt_key_status(&k.kid, replica, k.status, KeyStatus::Lost, now_s)
                    .await?;
                lost_one = true;
            }
        }
        if lost_one {
            continue;
        }
        match next_step(&mine, &schedule, now_s) {
            Step::Wait => {
                let active = mine
                    .into_iter()
                    .filter(|k| k.status == KeyStatus::Active)
                    .max_by_key(|k| k.not_after)
                    .ok_or_else(|| AuthorityError::Inconsistent("no active JWT key".into()))?;
                return Ok((active, changed));
            }
            step @ (Step::CreateActive | Step::Prepare) => {
                let status = if step == Step::CreateActive {
                    KeyStatus::Active
                } else {
                    KeyStatus::Prepared
                };
                create(store, config, replica, keys_dir, status, now).await?;
                changed = true;
            }
            Step::Activate { prepared, retiring } => {
                activate_key(store, replica, &prepared, retiring.as_deref(), now_s).await?;
            }
        }
    }
    Err(AuthorityError::Inconsistent(
        "JWT key rotation did not settle; check the jwt_keys table".into(),
    ))
}

async fn activate_key(
    store: &Store,
    replica: &str,
    prepared: &str,
    retiring: Option<&str>,
    now: i64,
) -> Result<(), AuthorityError> {
    if let Some(old) = retiring {
        store
            .set_jwt_key_status(old, replica, KeyStatus::Active, KeyStatus::Old, now)
            .await?;
    }
    store
        .set_jwt_key_status(
            prepared,
            replica,
            KeyStatus::Prepared,
            KeyStatus::Active,
            now,
        )
        .await?;
    tracing::info!(kid = %prepared, retired = retiring.unwrap_or(""), "JWT signing key activated");
    Ok(())
}

/// This replica's unexpired, unrevoked JWT keys.
async fn mine(store: &Store, replica: &str, now: i64) -> Result<Vec<JwtKeyRecord>, AuthorityError> {
    Ok(store
        .jwt_keys(now)
        .await?
        .into_iter()
        .filter(|k| k.replica == replica)
        .collect())
}

/// `signet ca prepare --kind jwt`: this replica's next JWT key, published
/// now.
pub(crate) async fn prepare(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: SystemTime,
) -> Result<JwtKeyRecord, AuthorityError> {
    let keys = mine(store, replica, unix_seconds(now)).await?;
    incident::may_prepare(&keys).map_err(AuthorityError::Refused)?;
    let kid = create(
        store,
        config,
        replica,
        &config.keys_dir(),
        KeyStatus::Prepared,
        now,
    )
    .await
    .map_err(crate::keys::authority::prepared_meanwhile)?;
    Ok(store.jwt_key(&kid).await?)
}

/// `signet ca activate --kind jwt`: the prepared JWT key signs from now on.
pub(crate) async fn activate(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    now: SystemTime,
) -> Result<JwtKeyRecord, AuthorityError> {
    let now_s = unix_seconds(now);
    let keys = mine(store, replica, now_s).await?;
    let schedule = Schedule::for_lifetime(config.jwt_key_ttl);
    let prepared =
        incident::to_activate(&keys, &schedule, now_s).map_err(AuthorityError::Refused)?;
    let retiring = keys
        .iter()
        .find(|k| k.status == KeyStatus::Active)
        .map(|k| k.kid.as_str());
    activate_key(store, replica, &prepared.kid, retiring, now_s).await?;
    Ok(store.jwt_key(&prepared.kid).await?)
}

/// `signet ca taint KID`: agents stop handing out tokens the key signed
/// and get new ones signed by the active key.
pub(crate) async fn taint(
    store: &Store,
    kid: &str,
    now: SystemTime,
) -> Result<JwtKeyRecord, AuthorityError> {
    let key = store.jwt_key(kid).await?;
    incident::may_taint(&key).map_err(AuthorityError::Refused)?;
    store.taint_jwt_key(kid, unix_seconds(now)).await?;
    tracing::warn!(%kid, "JWT key tainted: agents replace the tokens it signed");
    Ok(store.jwt_key(kid).await?)
}

/// `signet ca revoke KID [--force]`: out of the bundle; tokens it signed
/// stop validating.
pub(crate) async fn revoke(
    store: &Store,
    config: &CaConfig,
    kid: &str,
    force: bool,
    now: SystemTime,
) -> Result<JwtKeyRecord, AuthorityError> {
    let now_s = unix_seconds(now);
    let key = store.jwt_key(kid).await?;
    incident::may_revoke(&key, config.max_jwt_svid_ttl as i64, force, now_s)
        .map_err(AuthorityError::Refused)?;
    store.revoke_jwt_key(kid, now_s).await?;
    tracing::warn!(%kid, forced = force, "JWT key revoked: out of the bundle");
    Ok(store.jwt_key(kid).await?)
}

async fn create(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    keys_dir: &Path,
    status: KeyStatus,
    now: SystemTime,
) -> Result<String, AuthorityError> {
    let sign_err =
        |e: signet_identity::jwt_svid::JwtSignError| AuthorityError::Inconsistent(e.to_string());
    let (key, pkcs8) = match config.jwt_key_type {
        JwtKeyType::EcP256 => JwtSigningKey::generate_es256().map_err(sign_err)?,
        JwtKeyType::Rsa2048 => tokio::task::spawn_blocking(|| JwtSigningKey::generate_rs256(2048))
            .await
            .map_err(|e| AuthorityError::Inconsistent(e.to_string()))?
            .map_err(sign_err)?,
    };
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| AuthorityError::Inconsistent("no randomness for a key ID".into()))?;
    let kid = hex(&id);
    write_private_file(&key_path(keys_dir, &kid), &pkcs8)?;
    let now_s = unix_seconds(now);
    let record = JwtKeyRecord {
        kid: kid.clone(),
        alg: key.algorithm().name().into(),
        public_key: key.public_spki_der(),
        status,
        not_before: now_s - 60,
        not_after: now_s + config.jwt_key_ttl as i64,
        created_at: now_s,
        replica: replica.to_owned(),
        tainted: false,
        retired_at: 0,
    };
    crate::keys::authority::unless_recorded(
        store.insert_jwt_key(&record).await,
        &key_path(keys_dir, &kid),
    )?;
    tracing::info!(%kid, alg = %record.alg, status = ?status, not_after = record.not_after, "JWT signing key created and published");
    Ok(kid)
}

/// The signer of JWT key `record`, from its private key file.
pub(crate) fn load(record: &JwtKeyRecord, config: &CaConfig) -> Result<JwtSigner, AuthorityError> {
    let path = key_path(&config.keys_dir(), &record.kid);
    let pkcs8 = std::fs::read(&path).map_err(|source| AuthorityError::Io {
        path: path.clone(),
        source,
    })?;
    let alg = JwtAlgorithm::from_name(&record.alg).ok_or_else(|| {
        AuthorityError::Inconsistent(format!("JWT key {}: alg {:?}", record.kid, record.alg))
    })?;
    let key = JwtSigningKey::from_pkcs8(alg, &pkcs8)
        .map_err(|e| AuthorityError::Inconsistent(format!("{}: {e}", path.display())))?;
    if key.public_spki_der() != record.public_key {
        return Err(AuthorityError::Inconsistent(format!(
            "{} does not match JWT key {}",
            path.display(),
            record.kid
        )));
    }
    Ok(JwtSigner {
        kid: record.kid.clone(),
        key,
        not_after: from_unix_seconds(record.not_after),
    })
}
