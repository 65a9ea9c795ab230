//! The CA's JWT signing keys as a [`KeySlot`], driven by
//! [`crate::keys::slot`] like the X.509 keys.
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
use crate::keys::rotation::Schedule;
use crate::keys::slot::KeySlot;
use crate::registry::join_token::hex;
use crate::store::{JwtKeyRecord, KeyJournal, KeyStatus, KeyTable, Store};

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

/// One replica's JWT signing keys.
pub(crate) struct JwtSlot<'a> {
    /// The database.
    pub store: &'a Store,
    /// The CA's configuration (key type and lifetime, data dir).
    pub config: &'a CaConfig,
    /// This replica.
    pub replica: &'a str,
}

impl KeySlot for JwtSlot<'_> {
    type Record = JwtKeyRecord;
    const TABLE: KeyTable = KeyTable::Jwt;
    const NAME: &'static str = "JWT";
    const NEEDS_FILE: &'static [KeyStatus] = &[KeyStatus::Active, KeyStatus::Prepared];

    fn store(&self) -> &Store {
        self.store
    }

    fn schedule(&self) -> Schedule {
        Schedule::for_lifetime(self.config.jwt_key_ttl)
    }

    fn max_svid_ttl(&self) -> i64 {
        self.config.max_jwt_svid_ttl as i64
    }

    fn key_file(&self, kid: &str) -> PathBuf {
        key_path(&self.config.keys_dir(), kid)
    }

    /// Unrevoked too.
    async fn mine(&self, now: i64) -> Result<Vec<JwtKeyRecord>, AuthorityError> {
        Ok(self
            .store
            .jwt_keys(now)
            .await?
            .into_iter()
            .filter(|k| k.replica == self.replica)
            .collect())
    }

    async fn record(&self, kid: &str) -> Result<JwtKeyRecord, AuthorityError> {
        Ok(self.store.jwt_key(kid).await?)
    }

    /// Every new key is in the bundle.
    async fn create(
        &self,
        status: KeyStatus,
        now: SystemTime,
    ) -> Result<(String, bool), AuthorityError> {
        let kid = create(self.store, self.config, self.replica, status, now).await?;
        Ok((kid, true))
    }

    /// Keys past their `not_after` are deleted (no token they signed is
    /// valid any more).
    async fn prune(&self, now: i64) -> Result<bool, AuthorityError> {
        Ok(self.store.delete_expired_jwt_keys(now).await? > 0)
    }

    /// The bundle lists unrevoked JWT keys: nothing else to take out.
    fn revocation(&self, _key: &JwtKeyRecord) -> Result<Option<String>, AuthorityError> {
        Ok(None)
    }
}

async fn create(
    store: &Store,
    config: &CaConfig,
    replica: &str,
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
    let keys_dir = &config.keys_dir();
    write_private_file(&key_path(keys_dir, &kid), &pkcs8)?;
    let now_s = unix_seconds(now);
    let record = JwtKeyRecord {
        kid: kid.clone(),
        alg: key.algorithm().name().into(),
        public_key: key.public_spki_der(),
        replica: replica.to_owned(),
        journal: KeyJournal::new(status, now_s - 60, now_s + config.jwt_key_ttl as i64, now_s),
    };
    crate::keys::authority::unless_recorded(
        store.insert_jwt_key(&record).await,
        &key_path(keys_dir, &kid),
    )?;
    tracing::info!(%kid, alg = %record.alg, status = ?status, not_after = record.journal.not_after, "JWT signing key created and published");
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
        not_after: from_unix_seconds(record.journal.not_after),
    })
}
