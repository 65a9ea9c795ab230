//! JWT-SVIDs the agent has had the CA sign, cached per (SPIFFE ID, audience
//! set) and served until half their lifetime is gone, so a burst of fetches
//! costs one signature. The agent never holds a JWT signing key.
//!
//! Concurrent fetches of the same key wait for the one signature in flight
//! instead of each asking the CA. The cache is shared by every workload of
//! the node, so no identity may crowd the others out of it:
//!
//! - an identity holds at most `per_identity` tokens: past that, its own
//!   least recently used token makes room for its new one;
//! - the whole cache holds at most `max_entries`: past that, stale tokens
//!   go first, then the least recently used token of the identity that
//!   holds the most, but never an identity's last token;
//! - a token that still finds no room is served uncached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use signet_identity::x509_svid::unix_seconds;

/// A signed token and its times (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedJwt {
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
    pub(crate) fn is_fresh(&self, now: i64) -> bool {
        let half = (self.expires_at - self.issued_at) / 2;
        now < self.issued_at + half
    }
}

/// Audiences, sorted and deduplicated.
type Audiences = Vec<String>;

/// One cached token, filled by one signature at a time.
#[derive(Default)]
struct SlotInner {
    token: tokio::sync::Mutex<Option<CachedJwt>>,
    /// When last handed out, as the cache's use counter (not the clock:
    /// many uses fall in one second, and eviction must tell them apart).
    last_used: AtomicU64,
}

type Slot = Arc<SlotInner>;

impl SlotInner {
    /// Whether the slot may go: nobody is filling it and its token is
    /// stale (or absent) at `now`.
    fn stale(&self, now: i64) -> bool {
        match self.token.try_lock() {
            Ok(guard) => guard.as_ref().is_none_or(|t| !t.is_fresh(now)),
            Err(_) => false,
        }
    }

    /// Whether nobody is filling it now.
    fn idle(&self) -> bool {
        self.token.try_lock().is_ok()
    }
}

#[derive(Default)]
struct Slots {
    by_id: HashMap<String, HashMap<Audiences, Slot>>,
    total: usize,
}

impl Slots {
    /// Removes `id`'s least recently used idle slot (keeping at least
    /// `keep` of its slots); whether one went.
    fn evict_lru_of(&mut self, id: &str, keep: usize) -> bool {
        let Some(slots) = self.by_id.get_mut(id) else {
            return false;
        };
        if slots.len() <= keep {
            return false;
        }
        let victim = slots
            .iter()
            .filter(|(_, s)| s.idle())
            .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
            .map(|(aud, _)| aud.clone());
        match victim {
            Some(aud) => {
                slots.remove(&aud);
                self.total -= 1;
                true
            }
            None => false,
        }
    }

    /// Drops `id`'s stale slots.
    fn drop_stale_of(&mut self, id: &str, now: i64) {
        if let Some(slots) = self.by_id.get_mut(id) {
            let before = slots.len();
            slots.retain(|_, s| !s.stale(now));
            self.total -= before - slots.len();
        }
    }

    /// Drops every stale slot.
    fn drop_stale(&mut self, now: i64) {
        let mut total = 0;
        self.by_id.retain(|_, slots| {
            slots.retain(|_, s| !s.stale(now));
            total += slots.len();
            !slots.is_empty()
        });
        self.total = total;
    }
}

/// The cache.
pub(crate) struct JwtSvidCache {
    slots: Mutex<Slots>,
    max_entries: usize,
    per_identity: usize,
    /// Counts uses, to order slots by their last one.
    uses: AtomicU64,
}

impl JwtSvidCache {
    /// An empty cache of at most `max_entries` (SPIFFE ID, audience) keys,
    /// at most `per_identity` of them for one SPIFFE ID.
    pub(crate) fn new(max_entries: usize, per_identity: usize) -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            max_entries,
            per_identity: per_identity.clamp(1, max_entries.max(1)),
            uses: AtomicU64::new(0),
        }
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().total
    }

    /// Keys held now for `spiffe_id`.
    #[cfg(test)]
    pub(crate) fn len_of(&self, spiffe_id: &str) -> usize {
        self.lock().by_id.get(spiffe_id).map_or(0, HashMap::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The slot for (`id`, `aud`), made if there is room within the quotas
    /// (see the module docs); `None` when there is none.
    fn slot(&self, id: &str, aud: &Audiences, now: i64) -> Option<Slot> {
        let use_count = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        if let Some(slot) = slots.by_id.get(id).and_then(|m| m.get(aud)) {
            slot.last_used.store(use_count, Ordering::Relaxed);
            return Some(slot.clone());
        }
        let held = slots.by_id.get(id).map_or(0, HashMap::len);
        if held >= self.per_identity {
            // Its own stale tokens go first, then its least recently used:
            // only this identity's tokens are looked at.
            slots.drop_stale_of(id, now);
            let held = slots.by_id.get(id).map_or(0, HashMap::len);
            if held >= self.per_identity && !slots.evict_lru_of(id, 0) {
                return None;
            }
        }
        if slots.total >= self.max_entries {
            slots.drop_stale(now);
        }
        if slots.total >= self.max_entries {
            // The identity holding the most gives up its least recently
            // used token, never its last.
            let biggest = slots
                .by_id
                .iter()
                .filter(|(other, _)| other.as_str() != id)
                .max_by_key(|(_, m)| m.len())
                .map(|(other, m)| (other.clone(), m.len()));
            let own = slots.by_id.get(id).map_or(0, HashMap::len);
            let from = match biggest {
                Some((other, n)) if n > own.max(1) => other,
                // Nobody holds more than this identity: it cycles its own.
                _ if own >= 1 => id.to_owned(),
                _ => return None,
            };
            if !slots.evict_lru_of(&from, 1) {
                return None;
            }
        }
        let slot = Slot::default();
        slot.last_used.store(use_count, Ordering::Relaxed);
        slots
            .by_id
            .entry(id.to_owned())
            .or_default()
            .insert(aud.clone(), slot.clone());
        slots.total += 1;
        Some(slot)
    }

    /// A fresh token for `spiffe_id` and `audience`: the cached one if
    /// `usable` (its signing key still trusted), or one `mint` gets signed
    /// (only one `mint` runs per key at a time; the others wait for its
    /// result).
    pub(crate) async fn get_or_mint<E, F, Fut>(
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
        let now = unix_seconds(now);
        let Some(slot) = self.slot(spiffe_id, &aud, now) else {
            return mint().await;
        };
        let mut cached = slot.token.lock().await;
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
        let cache = JwtSvidCache::new(10, 10);
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
        let cache = JwtSvidCache::new(10, 10);
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
        let cache = Arc::new(JwtSvidCache::new(10, 10));
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
        let cache = JwtSvidCache::new(10, 10);
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
        let cache = JwtSvidCache::new(3, 3);
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

    #[tokio::test]
    async fn one_identity_asking_for_many_audiences_cycles_its_own_tokens() {
        let cache = JwtSvidCache::new(10, 4);
        let minted = AtomicUsize::new(0);
        let mint = || async { Ok::<_, ()>(token(minted.fetch_add(1, Ordering::SeqCst), 1000)) };
        let victim = cache
            .get_or_mint("victim", &["payments".to_owned()], at(1000), |_| true, mint)
            .await
            .unwrap();
        // All within one second: eviction tells uses apart by their order.
        for i in 0..100 {
            cache
                .get_or_mint("abuser", &[format!("aud-{i}")], at(1000), |_| true, mint)
                .await
                .unwrap();
        }
        assert_eq!(cache.len_of("abuser"), 4, "at its quota, no more");
        for i in 0..96 {
            let evicted = cache
                .get_or_mint(
                    "abuser",
                    &[format!("aud-{i}")],
                    at(1001),
                    |_| true,
                    || async { Err("CA unavailable") },
                )
                .await;
            assert!(
                evicted.is_err(),
                "aud-{i} was kept; aud-96..99 are the latest"
            );
        }
        assert_eq!(cache.len_of("victim"), 1);
        // The CA is down: the victim's token is still served.
        let served = cache
            .get_or_mint(
                "victim",
                &["payments".to_owned()],
                at(1020),
                |_| true,
                || async { Err("CA unavailable") },
            )
            .await;
        assert_eq!(served, Ok(victim));
        // The abuser's most recent audiences are the ones it kept.
        let kept = cache
            .get_or_mint(
                "abuser",
                &["aud-99".to_owned()],
                at(1020),
                |_| true,
                || async { Err("CA unavailable") },
            )
            .await;
        assert!(kept.is_ok());
    }

    #[tokio::test]
    async fn a_full_cache_takes_from_the_biggest_holder_and_never_anyones_last_token() {
        let cache = JwtSvidCache::new(6, 4);
        let minted = AtomicUsize::new(0);
        let mint = || async { Ok::<_, ()>(token(minted.fetch_add(1, Ordering::SeqCst), 1000)) };
        let get = |id: &'static str, aud: &'static str, t: u64| {
            let cache = &cache;
            let mint = &mint;
            async move {
                cache
                    .get_or_mint(id, &[aud.to_owned()], at(t), |_| true, mint)
                    .await
                    .unwrap()
            }
        };
        for (i, aud) in ["a1", "a2", "a3", "a4"].into_iter().enumerate() {
            get("big", aud, 1000 + i as u64).await;
        }
        get("small", "s1", 1000).await;
        get("other", "o1", 1000).await;
        assert_eq!(cache.len(), 6);
        // A newcomer: the biggest holder's least recently used ("a1") goes.
        get("new", "n1", 1010).await;
        assert_eq!(
            (cache.len(), cache.len_of("big"), cache.len_of("new")),
            (6, 3, 1)
        );
        // Down to one token each, nobody's last token is taken: a new key
        // is served, not kept.
        get("new2", "x", 1011).await;
        get("new3", "x", 1012).await;
        get("new4", "x", 1013).await;
        assert_eq!(cache.len_of("big"), 1);
        let before = minted.load(Ordering::SeqCst);
        get("new5", "x", 1014).await;
        get("new5", "x", 1014).await;
        assert_eq!(minted.load(Ordering::SeqCst), before + 2, "served uncached");
        for id in ["big", "small", "other", "new", "new2", "new3"] {
            assert_eq!(cache.len_of(id), 1, "{id} keeps its last token");
        }
    }
}
