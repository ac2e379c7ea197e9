//! Atomic file replacement: a temporary file in the target's directory, filled, flushed to disk,
//! then renamed over the target, so a reader (the container runtime loading its CNI
//! configuration, a kubelet running the plugin) sees the old file or the new one, never half of
//! either.

use super::error::{InstallError, Result};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, file mode `mode`.
pub fn write(path: &Path, mode: u32, bytes: &[u8]) -> Result<()> {
    write_with(path, mode, |file| file.write_all(bytes))
}

/// Replaces `path` with what `fill` writes, file mode `mode` exactly (whatever the umask).
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let temp = temp_path(path);
    let mut file = create_temp(&temp, mode)?;
    let filled = fill(&mut file)
        .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = filled.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(InstallError::io("writing", path)(e));
    }
    sync_dir(path)
}

/// Flushes a directory entry change (a rename, a removal) of `path` to disk.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(InstallError::io("syncing directory", dir))
}

/// A hidden name in the same directory (a rename stays on one filesystem) whose extension is
/// none the runtime loads as a network configuration.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.{}.meshcap-tmp", std::process::id()))
}

fn create_temp(temp: &Path, mode: u32) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(temp)
    };
    match open() {
        // A leftover of an installer of the same pid id that was killed mid-write.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(temp).map_err(InstallError::io("removing stale", temp))?;
            open()
        }
        other => other,
    }
    .map_err(InstallError::io("creating", temp))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory holding `name` with the text "old".
    fn dir_with(test: &str, name: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("meshcap-atomic-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join(name);
        std::fs::write(&target, "old").unwrap();
        (dir, target)
    }

    #[test]
    fn replaces_with_exact_mode_and_leaves_no_temp() {
        let (dir, target) = dir_with("replace", "a.conflist");
        write(&target, 0o600, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.conflist")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_fill_keeps_the_old_file() {
        let (dir, target) = dir_with("fail", "b.conf");
        let err = write_with(&target, 0o644, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("b.conf"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
