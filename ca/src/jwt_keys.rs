//! The CA's JWT signing keys and their rotation, apart from the X.509 keys.
//!
//! Each replica signs with its own key; every replica's keys are in the
//! bundle. A key's life, with `L` its lifetime (`jwt_key_ttl`):
//!
//! ```text
//!   prepared ──(≤ min(L/6, 7 d) left on the active key,
//!   │           and published for ≥ min(L/12, 10 s))──▶ active ──▶ old ──(not_after)──▶ deleted
//!   └── made when the active key has ≤ min(L/2, 30 d) left
//! ```
//!
//! A prepared key is published the moment it is made and signs only after
//! every agent has had time to learn it, so no relying party ever sees a
//! token before its key. Tokens never outlive the key that signed them, and
//! keys stay published until `not_after`, so no token fails validation
//! because of a rotation. Which step comes next is [`next_step`], a pure
//! function of the keys and the time, tested without waiting.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use signet_identity::jwt_svid::{JwtAlgorithm, JwtSigningKey};
use signet_identity::x509_svid::{from_unix_seconds, unix_seconds};

use crate::authority::{write_private_file, AuthorityError};
use crate::config::{CaConfig, JwtKeyType};
use crate::join_token::hex;
use crate::store::{JwtKeyRecord, JwtKeyStatus, Store};

/// Longest wait between preparing a key and letting it sign.
const MAX_PUBLISH_GRACE: Duration = Duration::from_secs(10);

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

/// The thresholds of one key lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Key lifetime, seconds.
    pub lifetime: i64,
    /// Prepare the next key when the active one has this much left.
    pub prepare_at: i64,
    /// Activate the prepared key when the active one has this much left.
    pub activate_at: i64,
    /// Least time a prepared key is published before it signs.
    pub publish_grace: i64,
}

impl Schedule {
    /// The thresholds for keys of `lifetime` seconds.
    pub fn for_lifetime(lifetime: u64) -> Self {
        let l = lifetime as i64;
        Self {
            lifetime: l,
            prepare_at: (l / 2).min(30 * 86400),
            activate_at: (l / 6).min(7 * 86400),
            publish_grace: (l / 12).min(MAX_PUBLISH_GRACE.as_secs() as i64).max(1),
        }
    }

    /// How often the rotation should be looked at.
    pub fn check_interval(&self) -> Duration {
        Duration::from_secs((self.lifetime as u64 / 48).clamp(1, 60))
    }
}

/// What rotation does next for one replica's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No key signs and none is prepared (first start, or every key lost):
    /// make one and sign with it at once.
    CreateActive,
    /// Make the next key and publish it.
    Prepare,
    /// The prepared key takes over; the active one (if any) becomes old.
    Activate {
        /// The prepared key.
        prepared: String,
        /// The key it replaces.
        retiring: Option<String>,
    },
    /// Nothing to do.
    Wait,
}

/// The next rotation step for the keys of one replica (`mine`, unexpired)
/// at `now` (Unix seconds).
pub fn next_step(mine: &[JwtKeyRecord], schedule: &Schedule, now: i64) -> Step {
    let newest = |status| {
        mine.iter()
            .filter(|k| k.status == status && k.not_after > now)
            .max_by_key(|k| (k.not_after, k.kid.clone()))
    };
    let active = newest(JwtKeyStatus::Active);
    let prepared = newest(JwtKeyStatus::Prepared);
    match (active, prepared) {
        (None, None) => Step::CreateActive,
        (None, Some(p)) => Step::Activate {
            prepared: p.kid.clone(),
            retiring: None,
        },
        (Some(a), prepared) => {
            let left = a.not_after - now;
            match prepared {
                None if left <= schedule.prepare_at => Step::Prepare,
                Some(p)
                    if left <= schedule.activate_at
                        && now - p.created_at >= schedule.publish_grace =>
                {
                    Step::Activate {
                        prepared: p.kid.clone(),
                        retiring: Some(a.kid.clone()),
                    }
                }
                _ => Step::Wait,
            }
        }
    }
}

/// Where the private key of JWT key `kid` lives.
pub fn key_path(keys_dir: &Path, kid: &str) -> PathBuf {
    keys_dir.join(format!("jwt-{kid}.pk8"))
}

/// Applies rotation steps for `replica` until there is nothing to do, and
/// returns the active key (to sign with; [`load`] it when it is not the one
/// in use) and whether the bundle changed (a key was made or deleted).
pub async fn rotate(
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
            let usable = matches!(k.status, JwtKeyStatus::Active | JwtKeyStatus::Prepared);
            if usable && !key_path(keys_dir, &k.kid).exists() {
                tracing::warn!(kid = %k.kid, "JWT signing key file is missing: key marked lost (it stays published until it expires)");
                store
                    .set_jwt_key_status(&k.kid, replica, k.status, JwtKeyStatus::Lost)
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
                    .filter(|k| k.status == JwtKeyStatus::Active)
                    .max_by_key(|k| k.not_after)
                    .ok_or_else(|| AuthorityError::Inconsistent("no active JWT key".into()))?;
                return Ok((active, changed));
            }
            step @ (Step::CreateActive | Step::Prepare) => {
                let status = if step == Step::CreateActive {
                    JwtKeyStatus::Active
                } else {
                    JwtKeyStatus::Prepared
                };
                create(store, config, replica, keys_dir, status, now).await?;
                changed = true;
            }
            Step::Activate { prepared, retiring } => {
                if let Some(old) = &retiring {
                    store
                        .set_jwt_key_status(old, replica, JwtKeyStatus::Active, JwtKeyStatus::Old)
                        .await?;
                }
                store
                    .set_jwt_key_status(
                        &prepared,
                        replica,
                        JwtKeyStatus::Prepared,
                        JwtKeyStatus::Active,
                    )
                    .await?;
                tracing::info!(kid = %prepared, retired = retiring.as_deref().unwrap_or(""), "JWT signing key activated");
            }
        }
    }
    Err(AuthorityError::Inconsistent(
        "JWT key rotation did not settle; check the jwt_keys table".into(),
    ))
}

async fn create(
    store: &Store,
    config: &CaConfig,
    replica: &str,
    keys_dir: &Path,
    status: JwtKeyStatus,
    now: SystemTime,
) -> Result<(), AuthorityError> {
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
    };
    store.insert_jwt_key(&record).await?;
    tracing::info!(%kid, alg = %record.alg, status = ?status, not_after = record.not_after, "JWT signing key created and published");
    Ok(())
}

/// The signer of JWT key `record`, from its private key file.
pub fn load(record: &JwtKeyRecord, config: &CaConfig) -> Result<JwtSigner, AuthorityError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, status: JwtKeyStatus, created: i64, lifetime: i64) -> JwtKeyRecord {
        JwtKeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            public_key: Vec::new(),
            status,
            not_before: created - 60,
            not_after: created + lifetime,
            created_at: created,
            replica: "r".into(),
        }
    }

    /// Runs the schedule over three lifetimes, applying each step, and
    /// checks the rotation promises at every second.
    fn simulate(lifetime: i64, max_token_ttl: i64) {
        let schedule = Schedule::for_lifetime(lifetime as u64);
        let mut keys: Vec<JwtKeyRecord> = Vec::new();
        let mut n = 0;
        let mut activations = Vec::new();
        for now in 0..3 * lifetime {
            keys.retain(|k| k.not_after > now);
            loop {
                match next_step(&keys, &schedule, now) {
                    Step::Wait => break,
                    step @ (Step::CreateActive | Step::Prepare) => {
                        n += 1;
                        let status = if step == Step::CreateActive {
                            assert_eq!(now, 0, "only the first key signs without being prepared");
                            JwtKeyStatus::Active
                        } else {
                            JwtKeyStatus::Prepared
                        };
                        keys.push(key(&format!("k{n}"), status, now, lifetime));
                    }
                    Step::Activate { prepared, retiring } => {
                        for k in &mut keys {
                            if Some(&k.kid) == retiring.as_ref() {
                                k.status = JwtKeyStatus::Old;
                            }
                            if k.kid == prepared {
                                // Published long enough before signing.
                                assert!(now - k.created_at >= schedule.publish_grace);
                                k.status = JwtKeyStatus::Active;
                                activations.push(now);
                            }
                        }
                    }
                }
            }
            let active: Vec<_> = keys
                .iter()
                .filter(|k| k.status == JwtKeyStatus::Active)
                .collect();
            assert_eq!(active.len(), 1, "at {now}: {keys:?}");
            // A token signed now lasts its full lifetime: the key outlives it.
            assert!(
                active[0].not_after - now > max_token_ttl,
                "at {now} the active key has {}s left",
                active[0].not_after - now
            );
        }
        assert!(activations.len() >= 3, "{activations:?}");
    }

    #[test]
    fn rotation_keeps_one_published_active_key_that_outlives_every_token() {
        simulate(86400, 3600); // the defaults
        simulate(12, 2); // the end-to-end test's
        simulate(60, 10); // the smallest lifetime config allows for 10 s tokens
    }

    #[test]
    fn steps_at_each_threshold_both_sides() {
        let s = Schedule::for_lifetime(600); // prepare at 300 left, activate at 100
        assert_eq!(next_step(&[], &s, 0), Step::CreateActive);
        let a = key("a", JwtKeyStatus::Active, 0, 600);
        assert_eq!(next_step(std::slice::from_ref(&a), &s, 299), Step::Wait);
        assert_eq!(next_step(std::slice::from_ref(&a), &s, 300), Step::Prepare);
        let p = key("p", JwtKeyStatus::Prepared, 300, 600);
        assert_eq!(next_step(&[a.clone(), p.clone()], &s, 499), Step::Wait);
        let activate = Step::Activate {
            prepared: "p".into(),
            retiring: Some("a".into()),
        };
        assert_eq!(next_step(&[a.clone(), p.clone()], &s, 500), activate);
        // A key prepared late (the CA was down) is published for the grace
        // period before it signs.
        let late = key("p", JwtKeyStatus::Prepared, 550, 600);
        assert_eq!(s.publish_grace, 10);
        assert_eq!(next_step(&[a.clone(), late.clone()], &s, 559), Step::Wait);
        assert_eq!(next_step(&[a.clone(), late], &s, 560), activate);
        // With no active key left, a prepared key takes over at once.
        assert_eq!(
            next_step(&[p], &s, 700),
            Step::Activate {
                prepared: "p".into(),
                retiring: None
            }
        );
    }
}
