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
use crate::inbound::open_connections::OpenConnections;
use crate::metrics::Metrics;
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

/// One file's identity in a [`Fingerprint`]: path, size, mtime, and
/// device and inode (a file replaced with its size and mtime kept, as
/// `cp -p` or `rsync -t` do, is still another file).
type FileStamp = (PathBuf, u64, Option<std::time::SystemTime>, u64, u64);

/// What identifies a directory's contents cheaply: where it resolves to
/// (a deploy that swaps a symlink to a new directory changes it), and each
/// file's stamp.
type Fingerprint = (Option<PathBuf>, Vec<FileStamp>);

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(dir).ok();
    let mut v: Vec<_> = std::fs::read_dir(resolved.as_deref().unwrap_or(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((
                        e.file_name().into(),
                        m.len(),
                        m.modified().ok(),
                        m.dev(),
                        m.ino(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    (resolved, v)
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

    /// A deploy that swaps a symlink to a fully written new directory is
    /// seen, even when its files keep the old names, sizes and mtimes.
    #[test]
    fn a_symlink_swap_to_a_new_directory_is_a_change() {
        let root = tempfile::tempdir().unwrap();
        let (v1, v2) = (root.path().join("v1"), root.path().join("v2"));
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        let allow = |who: &str| {
            format!("[[allow]]\nto = \"spiffe://example.org/api\"\nfrom = [\"spiffe://example.org/{who}\"]\n")
        };
        std::fs::write(v1.join("p.toml"), allow("aaa")).unwrap();
        std::fs::write(v2.join("p.toml"), allow("bbb")).unwrap();
        let mtime = std::fs::metadata(v1.join("p.toml"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(v2.join("p.toml"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let link = root.path().join("policies");
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let before = fingerprint(&link);
        assert_eq!(before, fingerprint(&link), "stable while nothing changes");
        // The atomic deploy: a new symlink renamed over the old one.
        let next = root.path().join(".policies.new");
        std::os::unix::fs::symlink(&v2, &next).unwrap();
        std::fs::rename(&next, &link).unwrap();
        assert_ne!(before, fingerprint(&link));
        let loaded = load_dir(&link).unwrap();
        assert_eq!(loaded.rules.len(), 1);
        assert!(format!("{:?}", loaded.rules[0].from).contains("bbb"));
    }

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
