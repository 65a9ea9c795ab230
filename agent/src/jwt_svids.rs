//! JWT-SVIDs the agent has had the CA sign, cached per (SPIFFE ID, audience
//! set) and served until half their lifetime is gone, so a burst of fetches
//! costs one signature. The agent never holds a JWT signing key.
//!
//! Concurrent fetches of the same key wait for the one signature in flight
//! instead of each asking the CA. The cache holds at most `max_entries`
//! keys: past that, stale tokens are dropped, and a token that still finds
//! no room is served uncached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use signet_identity::x509_svid::unix_seconds;

/// A signed token and its times (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedJwt {
    /// Compact JWS.
    pub token: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// The `kid` of the key that signed it.
    pub kid: String,
}

impl CachedJwt {
    /// Whether it may still be handed out at `now`: less than half its
    /// lifetime gone, so the receiver gets a useful token.
    pub fn is_fresh(&self, now: i64) -> bool {
        let half = (self.expires_at - self.issued_at) / 2;
        now < self.issued_at + half
    }
}

/// (SPIFFE ID, audiences sorted and deduplicated).
type Key = (String, Vec<String>);

type Slot = Arc<tokio::sync::Mutex<Option<CachedJwt>>>;

/// The cache.
pub struct JwtSvidCache {
    slots: Mutex<HashMap<Key, Slot>>,
    max_entries: usize,
}

impl JwtSvidCache {
    /// An empty cache of at most `max_entries` (SPIFFE ID, audience) keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The slot for `key`, made if there is room (after dropping stale
    /// tokens); `None` when the cache is full of fresh ones.
    fn slot(&self, key: &Key, now: i64) -> Option<Slot> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key) {
            return Some(slot.clone());
        }
        if slots.len() >= self.max_entries {
            // Drop slots whose token is stale and that nobody is filling.
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(guard) => guard.as_ref().is_some_and(|t| t.is_fresh(now)),
                Err(_) => true,
            });
            if slots.len() >= self.max_entries {
                return None;
            }
        }
        let slot = Slot::default();
        slots.insert(key.clone(), slot.clone());
        Some(slot)
    }

    /// A fresh token for `spiffe_id` and `audience`: the cached one if
    /// `usable` (its signing key still trusted), or one `mint` gets signed
    /// (only one `mint` runs per key at a time; the others wait for its
    /// result).
    pub async fn get_or_mint<E, F, Fut>(
        &self,
        spiffe_id: &str,
        audience: &[String],
        now: SystemTime,
        usable: impl Fn(&CachedJwt) -> bool,
        mint: F,
    ) -> Result<CachedJwt, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedJwt, E>>,
    {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (spiffe_id.to_owned(), aud);
        let now = unix_seconds(now);
        let Some(slot) = self.slot(&key, now) else {
            return mint().await;
        };
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.is_fresh(now) && usable(t)) {
            return Ok(token.clone());
        }
        let token = mint().await?;
        *cached = Some(token.clone());
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn token(n: usize, issued_at: i64) -> CachedJwt {
        CachedJwt {
            token: format!("t{n}"),
            issued_at,
            expires_at: issued_at + 300,
            kid: format!("k{n}"),
        }
    }

    #[tokio::test]
    async fn a_token_whose_signing_key_is_no_longer_trusted_is_not_served_again() {
        let cache = JwtSvidCache::new(10);
        let minted = AtomicUsize::new(0);
        let mint = || async {
            let n = minted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(token(n, 1000))
        };
        let aud = ["a".to_owned()];
        let first = cache
            .get_or_mint("id", &aud, at(1000), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(first.kid, "k0");
        // Key k0 tainted or revoked: the cached token is replaced at once.
        let trusted = |t: &CachedJwt| t.kid != "k0";
        let second = cache
            .get_or_mint("id", &aud, at(1001), trusted, mint)
            .await
            .unwrap();
        assert_eq!(second.kid, "k1");
        let third = cache
            .get_or_mint("id", &aud, at(1002), trusted, mint)
            .await
            .unwrap();
        assert_eq!(third, second);
        assert_eq!(minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_is_served_from_the_cache_until_half_its_life_is_gone() {
        let cache = JwtSvidCache::new(10);
        let minted = AtomicUsize::new(0);
        let mint = || async {
            let n = minted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(token(n, 1000))
        };
        let aud = ["b".to_owned(), "a".to_owned()];
        let first = cache
            .get_or_mint("id", &aud, at(1000), |_| true, mint)
            .await
            .unwrap();
        // Audience order and repeats do not make another key.
        let same_aud = ["a".to_owned(), "b".to_owned(), "a".to_owned()];
        let again = cache
            .get_or_mint("id", &same_aud, at(1149), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        // At half its lifetime a new one is signed.
        let later = cache
            .get_or_mint("id", &aud, at(1150), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(later.token, "t1");
        // Another audience or identity is another token.
        cache
            .get_or_mint("id", &["c".to_owned()], at(1150), |_| true, mint)
            .await
            .unwrap();
        cache
            .get_or_mint("other", &aud, at(1150), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(minted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_burst_of_fetches_costs_one_signature() {
        let cache = Arc::new(JwtSvidCache::new(10));
        let minted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, minted) = (cache.clone(), minted.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_mint(
                        "id",
                        &["a".to_owned()],
                        at(1000),
                        |_| true,
                        || async {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(token(minted.fetch_add(1, Ordering::SeqCst), 1000))
                        },
                    )
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().token, "t0");
        }
        assert_eq!(minted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_signature_is_not_cached() {
        let cache = JwtSvidCache::new(10);
        let r = cache
            .get_or_mint(
                "id",
                &["a".to_owned()],
                at(1000),
                |_| true,
                || async { Err("down") },
            )
            .await;
        assert_eq!(r, Err("down"));
        let ok = cache
            .get_or_mint(
                "id",
                &["a".to_owned()],
                at(1000),
                |_| true,
                || async { Ok::<_, &str>(token(7, 1000)) },
            )
            .await;
        assert_eq!(ok.unwrap().token, "t7");
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_its_limit_and_still_serves_past_it() {
        let cache = JwtSvidCache::new(3);
        let minted = AtomicUsize::new(0);
        let mint = || async { Ok::<_, ()>(token(minted.fetch_add(1, Ordering::SeqCst), 1000)) };
        for id in ["a", "b", "c"] {
            cache
                .get_or_mint(id, &["x".to_owned()], at(1000), |_| true, mint)
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
        // The fourth key finds no room among fresh tokens: served, not kept.
        let d = cache
            .get_or_mint("d", &["x".to_owned()], at(1000), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(d.token, "t3");
        assert_eq!(cache.len(), 3);
        let d2 = cache
            .get_or_mint("d", &["x".to_owned()], at(1000), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(d2.token, "t4");
        // Once the others are stale, there is room again.
        cache
            .get_or_mint("d", &["x".to_owned()], at(1200), |_| true, mint)
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
