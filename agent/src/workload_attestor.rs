//! Unix workload attestation: who is calling, from facts the kernel vouches
//! for. The uid, gid and pid come from the socket's peer credentials
//! (`SO_PEERCRED`, taken by the kernel at `connect`); the binary's path and
//! hash come from `/proc/<pid>/exe`.
//!
//! PID reuse: the caller could exit and its pid be recycled by another
//! process between `connect` and our reads of `/proc`. As SPIRE does, the
//! agent pins the process with a pidfd before reading `/proc/<pid>`, and
//! after reading checks through the pidfd that this same process is still
//! alive; if it exited, the facts may belong to another process and the
//! attestation is refused. The effective uid and gid in `/proc/<pid>/status`
//! must also still match the peer credentials, read on every call: a caller
//! that changed user or group after connecting is refused on that
//! connection (the kernel's credentials are those of `connect`), and gets
//! what its new credentials allow only on a new one.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use signet_identity::selector::{unix, Selector};

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttestError {
    /// No peer credentials on the connection.
    #[error("the caller's credentials are unavailable")]
    NoCredentials,
    /// The process is gone (or was replaced) during attestation, or its
    /// uid or gid is no longer the one it connected with.
    #[error("the calling process exited during attestation or changed its uid or gid since it connected (reconnect)")]
    CallerExited,
    /// `/proc` could not be read.
    #[error("cannot inspect the calling process: {0}")]
    Proc(String),
}

/// Kernel-verified facts about the peer of a Unix socket connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerCred {
    /// Process ID at connect time.
    pub pid: i32,
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
}

/// Computes `unix:` selectors for callers; caches binary hashes by file
/// identity so a busy workload is hashed once. The identity is (device,
/// inode, size, ctime): unlike mtime, the change time cannot be set back by
/// whoever modifies the file, so a binary changed in place is hashed again.
pub(crate) struct WorkloadAttestor {
    hashes: Mutex<HashMap<FileIdentity, String>>,
    max_hash_bytes: u64,
    users: NameTable,
    groups: NameTable,
}

/// uid or gid → name from a passwd- or group-format file, re-read only when
/// the file changes (a stat per lookup instead of reading and parsing the
/// file on every Workload API call).
struct NameTable {
    path: PathBuf,
    cached: Mutex<Option<(FileIdentity, HashMap<u32, String>)>>,
}

impl NameTable {
    fn new(path: &str) -> Self {
        Self {
            path: PathBuf::from(path),
            cached: Mutex::new(None),
        }
    }

    /// The name of `id`, from the file as it is now.
    fn name(&self, id: u32) -> Option<String> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = file_identity(&meta);
        let mut cached = self.cached.lock().ok()?;
        match cached.as_ref() {
            Some((s, names)) if *s == stamp => names.get(&id).cloned(),
            _ => {
                let names = parse_names(&std::fs::read_to_string(&self.path).ok()?);
                let name = names.get(&id).cloned();
                *cached = Some((stamp, names));
                name
            }
        }
    }
}

fn file_identity(meta: &std::fs::Metadata) -> FileIdentity {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// What identifies one version of a file: device, inode, size, ctime (s, ns).
type FileIdentity = (u64, u64, u64, i64, i64);

impl Default for WorkloadAttestor {
    fn default() -> Self {
        Self::new(1 << 30)
    }
}

impl WorkloadAttestor {
    /// An attestor that hashes binaries of at most `max_hash_bytes`.
    pub(crate) fn new(max_hash_bytes: u64) -> Self {
        Self {
            hashes: Mutex::new(HashMap::new()),
            max_hash_bytes,
            users: NameTable::new("/etc/passwd"),
            groups: NameTable::new("/etc/group"),
        }
    }

    /// The caller's selectors, e.g. `unix:uid:1000`, `unix:path:/usr/bin/app`.
    /// The binary's sha256 is computed only when `want_sha256`.
    pub(crate) fn attest(
        &self,
        cred: PeerCred,
        want_sha256: bool,
    ) -> Result<Vec<Selector>, AttestError> {
        let pid = Pid::from_raw(cred.pid).ok_or(AttestError::NoCredentials)?;
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|_| AttestError::CallerExited)?;
        let proc_dir = PathBuf::from(format!("/proc/{}", cred.pid));

        let mut selectors = vec![unix::uid(cred.uid), unix::gid(cred.gid)];
        if let Some(user) = self.users.name(cred.uid) {
            selectors.push(unix::user(&user));
        }
        if let Some(group) = self.groups.name(cred.gid) {
            selectors.push(unix::group(&group));
        }
        let status = std::fs::read_to_string(proc_dir.join("status"))
            .map_err(|e| AttestError::Proc(e.to_string()))?;
        if !status_id_matches(&status, "Uid:", cred.uid)
            || !status_id_matches(&status, "Gid:", cred.gid)
        {
            return Err(AttestError::CallerExited);
        }
        match std::fs::read_link(proc_dir.join("exe")) {
            Ok(path) => {
                selectors.push(unix::path(&path));
                if want_sha256 {
                    if let Some(hash) = self.sha256(&proc_dir.join("exe"))? {
                        selectors.push(unix::sha256(&hash));
                    }
                }
            }
            // Kernel threads and zombies have no exe; other errors mean we
            // may not look (the agent lacks CAP_SYS_PTRACE for this uid).
            Err(e) => tracing::debug!(pid = cred.pid, error = %e, "no binary path for caller"),
        }

        // Still the same, live process? A pidfd polls readable once it exits.
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        let ready = poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .map_err(|e| AttestError::Proc(e.to_string()))?;
        if ready > 0 {
            return Err(AttestError::CallerExited);
        }
        Ok(selectors)
    }

    /// The binary's SHA-256 (hex), or `None` when it is larger than this
    /// attestor hashes.
    fn sha256(&self, exe: &Path) -> Result<Option<String>, AttestError> {
        let mut file =
            std::fs::File::open(exe).map_err(|e| AttestError::Proc(format!("open binary: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| AttestError::Proc(e.to_string()))?;
        let key = file_identity(&meta);
        if let Some(h) = self.hashes.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(h));
        }
        if meta.size() > self.max_hash_bytes {
            tracing::warn!(path = %exe.display(), size = meta.size(), max = self.max_hash_bytes, "binary too large to hash; no unix:sha256 selector for this caller");
            return Ok(None);
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| AttestError::Proc(format!("read binary: {e}")))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let hex: String = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Ok(mut m) = self.hashes.lock() {
            if m.len() > 1024 {
                m.clear();
            }
            m.insert(key, hex.clone());
        }
        Ok(Some(hex))
    }
}

/// id → name of a passwd- or group-format file (local files only; names
/// from LDAP/NSS are not seen). The first line for an id wins.
fn parse_names(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_pw), Some(id)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            names.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// Whether `/proc/<pid>/status` shows `id` as the effective ID of the
/// `field` line (`Uid:` or `Gid:`: real, effective, saved, file system).
fn status_id_matches(status: &str, field: &str, id: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|effective| effective.parse::<u32>().ok())
        == Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerCred {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        PeerCred {
            pid: std::process::id() as i32,
            uid: field("Uid:"),
            gid: field("Gid:"),
        }
    }

    #[test]
    fn attests_the_calling_process_with_kernel_facts() {
        let a = WorkloadAttestor::default();
        let s: Vec<String> = a
            .attest(me(), true)
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(s.contains(&format!("unix:uid:{}", me().uid)));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(s.contains(&format!("unix:path:{}", exe.display())), "{s:?}");
        assert!(s
            .iter()
            .any(|x| x.starts_with("unix:sha256:") && x.len() == 12 + 64));
    }

    #[test]
    fn a_binary_changed_in_place_with_its_mtime_restored_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("app");
        std::fs::write(&bin, b"original binary").unwrap();
        let mtime = std::fs::metadata(&bin).unwrap().modified().unwrap();
        let a = WorkloadAttestor::default();
        let first = a.sha256(&bin).unwrap().unwrap();
        // Same size, same inode, mtime set back: only ctime tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, b"tampered binary").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&bin).unwrap().modified().unwrap(), mtime);
        let second = a.sha256(&bin).unwrap().unwrap();
        assert_ne!(first, second, "the cache served the old binary's hash");
    }

    #[test]
    fn binaries_over_the_size_limit_are_not_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("huge");
        let f = std::fs::File::create(&bin).unwrap();
        f.set_len(40 << 30).unwrap(); // sparse: 40 GiB apparent
        let a = WorkloadAttestor::new(1 << 20);
        assert_eq!(a.sha256(&bin).unwrap(), None);
    }

    #[test]
    fn user_names_follow_changes_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        let table = NameTable::new(passwd.to_str().unwrap());
        assert_eq!(table.name(1000).as_deref(), Some("app"));
        assert_eq!(table.name(1001), None);
        // Renamed (and a new user): the next lookup sees the new file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/:/bin/sh\nnew:x:1001:1::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(table.name(1000).as_deref(), Some("web"));
        assert_eq!(table.name(1001).as_deref(), Some("new"));
        // The first line for an id wins, as getpwuid does.
        assert_eq!(
            parse_names("a:x:5:5\nb:x:5:5\n")
                .get(&5)
                .map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn a_caller_whose_uid_changed_is_refused() {
        let a = WorkloadAttestor::default();
        let mut cred = me();
        cred.uid = cred.uid.wrapping_add(4242);
        assert!(matches!(
            a.attest(cred, false),
            Err(AttestError::CallerExited)
        ));
    }

    #[test]
    fn a_caller_whose_gid_changed_is_refused() {
        let a = WorkloadAttestor::default();
        assert!(a.attest(me(), false).is_ok(), "unchanged: attested");
        let mut cred = me();
        cred.gid = cred.gid.wrapping_add(4242);
        assert!(matches!(
            a.attest(cred, false),
            Err(AttestError::CallerExited)
        ));
    }

    #[test]
    fn an_exited_caller_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let a = WorkloadAttestor::default();
        let r = a.attest(
            PeerCred {
                pid,
                uid: me().uid,
                gid: me().gid,
            },
            false,
        );
        assert!(r.is_err(), "{r:?}");
    }
}
