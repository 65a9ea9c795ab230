//! The change feed task: keeps this replica's entry cache and bundle
//! current with changes written through any replica.
//!
//! Local writes apply themselves at once ([`Ca::catch_up`] after the
//! commit). Changes from other replicas arrive by PostgreSQL
//! `LISTEN/NOTIFY` on `NOTIFY_CHANNEL`; each notification costs one
//! query for the whole replica, not one per agent. As a safety net (a
//! notification lost while the listening connection was down) the feed is
//! read every [`SAFETY_NET`] anyway: one indexed query that finds nothing
//! when nothing changed. SQLite has one replica, so only the safety net
//! runs besides the local writes.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::store::NOTIFY_CHANNEL;
use crate::Ca;

/// How often the feed is read without a notification.
pub const SAFETY_NET: Duration = Duration::from_secs(5);

/// How often old tombstones and feed rows are pruned, and the horizon
/// checked.
const MAINTENANCE: Duration = Duration::from_secs(60);

/// How long feed rows are kept, seconds: a replica cut off from the
/// database for longer reloads every entry when it comes back.
pub const CHANGES_RETENTION_SECS: i64 = 24 * 3600;

/// Runs until `stop` turns true.
pub async fn run(ca: Arc<Ca>, mut stop: watch::Receiver<bool>) {
    if ca.shares_database() {
        tokio::spawn(listen(ca.clone(), stop.clone()));
    }
    let mut safety_net = tokio::time::interval(SAFETY_NET);
    safety_net.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maintenance = tokio::time::interval(MAINTENANCE);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let bundle_due = bundle_refresh_in(&ca);
        tokio::select! {
            _ = ca.feed_wake.notified() => {}
            _ = safety_net.tick() => {}
            _ = maintenance.tick() => maintain(&ca).await,
            _ = tokio::time::sleep(bundle_due) => {
                if let Err(e) = ca.refresh_bundle().await {
                    tracing::warn!(error = %e, "cannot re-read the trust bundle; retrying");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        match ca.catch_up().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(revision = ca.revision(), "change feed readable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the change feed; agents are served what this replica has until it can");
            }
            Err(_) => {}
        }
    }
}

/// How long until an authority in the bundle expires (at least a second,
/// at most an hour).
fn bundle_refresh_in(ca: &Ca) -> Duration {
    let now = signet_identity::x509_svid::unix_seconds(ca.clock.now());
    let secs = (ca.bundle_valid_until().saturating_sub(now)).clamp(1, 3600);
    Duration::from_secs(secs as u64)
}

async fn maintain(ca: &Ca) {
    ca.prune_cache();
    if let Err(e) = ca.reload_if_behind().await {
        tracing::warn!(error = %e, "cannot check the change feed horizon");
    }
    let now = signet_identity::x509_svid::unix_seconds(ca.clock.now());
    match ca.prune_changes(now - CHANGES_RETENTION_SECS).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "pruned old change feed rows"),
        Err(e) => tracing::warn!(error = %e, "pruning the change feed failed"),
    }
}

/// Listens for other replicas' commits and wakes the feed on each; a lost
/// connection wakes it too (notifications may have been missed), then
/// reconnects with backoff.
async fn listen(ca: Arc<Ca>, mut stop: watch::Receiver<bool>) {
    let url = ca.config().database_url();
    let mut backoff = Duration::from_millis(200);
    let mut listener: Option<PgListener> = None;
    let mut reported = false;
    loop {
        let result = async {
            if listener.is_none() {
                let mut l = PgListener::connect(&url).await?;
                l.listen(NOTIFY_CHANNEL).await?;
                listener = Some(l);
                // Anything committed while not listening is read now.
                ca.feed_wake.notify_one();
            }
            match listener.as_mut() {
                Some(l) => l.try_recv().await.map(|n| n.is_some()),
                None => Ok(false),
            }
        };
        let received = tokio::select! {
            r = result => r,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        };
        match received {
            Ok(true) => {
                backoff = Duration::from_millis(200);
                if reported {
                    reported = false;
                    tracing::info!("listening for changes from other replicas again");
                }
                ca.feed_wake.notify_one();
            }
            Ok(false) => {
                // The connection was lost; it reconnects on the next call.
                ca.feed_wake.notify_one();
            }
            Err(e) => {
                listener = None;
                if !reported {
                    reported = true;
                    tracing::warn!(error = %e, "cannot listen for changes from other replicas; reading the feed every {}s until this works", SAFETY_NET.as_secs());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
