//! Writing key material and certificates to disk: atomically (readers see
//! the old file or the new one, never half of one) and, for secrets, with
//! mode 0600 from the first byte, never widened after the fact. The CA's
//! keys, the agent's SVID and `signet id fetch` all write through here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest configuration, bundle or policy file read: anything larger is
/// refused rather than read into memory.
pub const MAX_INPUT_FILE: u64 = 4 * 1024 * 1024;

/// Reads a text file an operator named (a configuration, a bundle, a
/// token): a regular file of at most [`MAX_INPUT_FILE`] bytes. A device
/// (`/dev/zero`), a FIFO or a directory is refused instead of read forever.
pub fn read_input_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(MAX_INPUT_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_INPUT_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", MAX_INPUT_FILE >> 20),
        ));
    }
    Ok(text)
}

/// Mode of files holding private keys.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and bundles.
pub const PUBLIC_MODE: u32 = 0o644;

/// The temporary file `path` is written through: hidden, beside it (so the
/// rename stays on one file system), named after it (so two files written
/// in one directory never share one).
fn temporary_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `contents` to `path` atomically with `mode`: a new temporary file
/// created with that mode (`O_EXCL`, so never through a planted symlink),
/// synced, renamed over `path`, and the directory synced.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temporary_for(path);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_input_file_is_a_bounded_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "a = 1\n").unwrap();
        assert_eq!(read_input_file(&ok).unwrap(), "a = 1\n");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_INPUT_FILE as usize + 1]).unwrap();
        assert!(read_input_file(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        let at = dir.path().join("at.toml");
        std::fs::write(&at, vec![b'#'; MAX_INPUT_FILE as usize]).unwrap();
        assert!(read_input_file(&at).is_ok(), "at the limit");
        for not_a_file in [std::path::Path::new("/dev/zero"), dir.path()] {
            let e = read_input_file(not_a_file).unwrap_err();
            assert!(
                e.to_string().contains("not a regular file")
                    || e.kind() == std::io::ErrorKind::IsADirectory,
                "{not_a_file:?}: {e}"
            );
        }
    }

    #[test]
    fn secrets_are_0600_and_replace_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("svid.key");
        let cert = dir.path().join("svid.pem");
        write_atomically(&key, b"old", SECRET_MODE).unwrap();
        write_atomically(&key, b"new secret", SECRET_MODE).unwrap();
        write_atomically(&cert, b"cert", PUBLIC_MODE).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"new secret");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        // Nothing left behind, and svid.key / svid.pem did not share a
        // temporary file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_ne!(temporary_for(&key), temporary_for(&cert));
    }

    #[test]
    fn a_planted_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"untouched").unwrap();
        let key = dir.path().join("key.pem");
        // The writer removes what is at the temporary name and creates it
        // anew with O_EXCL, which refuses to follow a symlink.
        std::os::unix::fs::symlink(&target, temporary_for(&key)).unwrap();
        write_atomically(&key, b"secret", SECRET_MODE).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
    }
}
