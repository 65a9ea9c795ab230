//! Keeps the policy in force up to date: reloads the directory when a file
//! changes (checked every second) or on SIGHUP. A directory that fails to
//! load is reported with file, line and reason, and the last good policy
//! stays in force — never "no policy", never "allow all".

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use signet_identity::SpiffeId;
use tokio::sync::watch;

use crate::config::Protocol;
use crate::metrics::Metrics;
use crate::open_connections::OpenConnections;
use crate::policy::{load_dir, CompiledPolicy, PolicyError};
use crate::workload_identity::IdentityWatch;

/// The policy in force, swapped atomically on reload.
#[derive(Clone, Default)]
pub struct PolicyHandle(Arc<RwLock<Arc<CompiledPolicy>>>);

impl PolicyHandle {
    /// The policy for the next decision.
    pub fn get(&self) -> Arc<CompiledPolicy> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, p: CompiledPolicy) {
        self.set_shared(Arc::new(p))
    }

    fn set_shared(&self, p: Arc<CompiledPolicy>) {
        match self.0.write() {
            Ok(mut g) => *g = p,
            Err(e) => *e.into_inner() = p,
        }
    }
}

/// Loads and checks a policy directory for a listener of `protocol` whose
/// own identity is `own`.
pub fn load_checked(
    dir: &Path,
    own: Option<&SpiffeId>,
    protocol: Protocol,
) -> Result<CompiledPolicy, PolicyError> {
    let policy = load_dir(dir)?;
    if protocol == Protocol::Tcp {
        if let Some(r) = CompiledPolicy::for_destination(&policy, own)
            .http_only_rules()
            .next()
        {
            return Err(PolicyError {
                file: r.file.clone(),
                line: r.line,
                reason: "this rule restricts methods/paths, which a tcp listener cannot check; set protocol = \"http\" or drop methods/paths".into(),
            });
        }
    }
    Ok(CompiledPolicy::for_destination(&policy, None))
}

/// What identifies a directory's contents cheaply: names, sizes, mtimes.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads the initial policy into a new handle.
pub fn initial(
    dir: &Path,
    own: &SpiffeId,
    protocol: Protocol,
) -> Result<PolicyHandle, PolicyError> {
    let handle = PolicyHandle::default();
    let p = load_checked(dir, Some(own), protocol)?;
    tracing::info!(dir = %dir.display(), rules = p.len(), "policy loaded");
    handle.set(p);
    Ok(handle)
}

/// Watches `dir` until `stop`.
pub async fn watch(
    dir: PathBuf,
    handle: PolicyHandle,
    identity: IdentityWatch,
    protocol: Protocol,
    metrics: Arc<Metrics>,
    open: Arc<OpenConnections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = fingerprint(&dir);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = stop.changed() => return,
        };
        let now = fingerprint(&dir);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let own = identity.borrow().as_ref().map(|i| i.spiffe_id.clone());
        // Reading and indexing a large policy is blocking work: keep it off
        // the threads that serve requests.
        let loaded = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || load_checked(&dir, own.as_ref(), protocol)).await
        };
        let loaded = match loaded {
            Ok(r) => r,
            Err(e) => Err(PolicyError {
                file: dir.clone(),
                line: 0,
                reason: format!("policy loader failed: {e}"),
            }),
        };
        match loaded {
            Ok(p) => {
                let p = Arc::new(p);
                tracing::info!(dir = %dir.display(), rules = p.len(), trigger = if forced { "SIGHUP" } else { "file change" }, "policy reloaded");
                handle.set_shared(p.clone());
                metrics.reload(true);
                let closed = open.revoke_denied(&p);
                if closed > 0 {
                    tracing::info!(
                        connections = closed,
                        "closing connections of peers the new policy revokes"
                    );
                }
            }
            Err(e) => {
                tracing::error!(file = %e.file.display(), line = e.line, reason = %e.reason, "policy reload rejected; keeping the last good policy");
                metrics.reload(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_listener_refuses_method_and_path_rules_for_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "[[allow]]\nto = \"spiffe://example.org/api\"\nfrom = [\"spiffe://example.org/web\"]\nmethods = [\"GET\"]\n",
        )
        .unwrap();
        let own = SpiffeId::parse("spiffe://example.org/api").unwrap();
        let e = load_checked(dir.path(), Some(&own), Protocol::Tcp).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("protocol = \"http\""), "{e}");
        assert!(load_checked(dir.path(), Some(&own), Protocol::Http).is_ok());
        // Rules for other destinations do not matter to this listener.
        let other = SpiffeId::parse("spiffe://example.org/other").unwrap();
        assert!(load_checked(dir.path(), Some(&other), Protocol::Tcp).is_ok());
    }
}
