//! Atomic file replacement: a temporary file in the target's directory, filled, flushed to disk,
//! then renamed over the target, so a reader (the container runtime loading its CNI
//! configuration, a kubelet running the plugin) sees the old file or the new one, never half of
//! either. For meshcap's own files (the binary, the kubeconfig); files other writers rewrite too
//! go through [`super::guarded`].
//!
//! Temporary files are named `.NAME.UNIQUE.meshcap-tmp` (an extension no runtime loads) and
//! held under an advisory lock (`flock`) while they are written. One left behind by an
//! installer killed midway (a 9 MB binary copy) is unlocked and is removed by the next pass of
//! any installer ([`remove_stale`]).

use super::error::{InstallError, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const TEMP_SUFFIX: &str = ".meshcap-tmp";

/// Temporary files changed more recently (ctime: written, created, renamed or swapped) are left
/// alone by [`remove_stale`] even when unlocked: the instant between a writer creating its file
/// and locking it, and another writer's version an edit holds for a moment after swapping it
/// out of the target ([`super::guarded`]).
const STALE_AFTER: Duration = Duration::from_secs(2);

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
    let mut temp = Temp::create(path, mode)?;
    temp.fill(fill)?;
    if let Err(e) = std::fs::rename(&temp.path, path) {
        return Err(InstallError::io("writing", path)(e));
    }
    temp.forget();
    sync_dir(path)
}

/// A temporary file beside a target, locked while it lives and removed on drop unless
/// [`Temp::forget`] says it was renamed away.
pub struct Temp {
    pub path: PathBuf,
    file: Option<Flock<File>>,
    mode: u32,
}

impl Temp {
    /// A new empty temporary file beside `target`, mode `mode`.
    pub fn create(target: &Path, mode: u32) -> Result<Temp> {
        let path = temp_path(target);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(InstallError::io("creating", &path))?;
        // Blocking never happens: nobody else knows the new name yet.
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| InstallError::io("locking", &path)(errno.into()))?;
        Ok(Temp {
            path,
            file: Some(file),
            mode,
        })
    }

    /// Fills the file, sets its mode exactly (whatever the umask) and flushes it to disk.
    pub fn fill(&mut self, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
        let mode = self.mode;
        let file: &mut File = self.file.as_mut().expect("open until dropped");
        fill(file)
            .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
            .and_then(|()| file.sync_all())
            .map_err(InstallError::io("writing", &self.path))
    }

    /// The open file (for its metadata).
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until dropped")
    }

    /// Renames the file to `to` and keeps holding its lock: for as long as the lock lives,
    /// others can tell that its writer is alive.
    pub fn rename_locked(mut self, to: &Path) -> Result<Flock<File>> {
        std::fs::rename(&self.path, to).map_err(InstallError::io("writing", to))?;
        self.path = PathBuf::new();
        sync_dir(to)?;
        Ok(self.file.take().expect("open until dropped"))
    }

    /// The file was renamed or swapped away: nothing to remove under its name.
    pub fn forget(mut self) {
        self.file.take();
        self.path = PathBuf::new();
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the temporary files in `dir` that no live writer holds: left by an installer killed
/// midway. Returns how many it removed; failures are only logged (a cleanup never fails a pass).
pub fn remove_stale(dir: &Path) -> usize {
    remove_unlocked(dir, STALE_AFTER)
}

/// Removes the unlocked temporary files in `dir` whose last change is older than `age`.
fn remove_unlocked(dir: &Path, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let changed = std::fs::symlink_metadata(&path).map(|m| {
            SystemTime::UNIX_EPOCH
                + Duration::new(
                    m.ctime().max(0) as u64,
                    m.ctime_nsec().clamp(0, 999_999_999) as u32,
                )
        });
        let old =
            changed.is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= age);
        if !old {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // Unlocked: its writer is gone (a lock dies with its process).
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!("removed a stale temporary file {}", path.display());
                    removed += 1;
                }
                Err(e) => tracing::warn!("removing stale {}: {e}", path.display()),
            }
            drop(lock);
        }
    }
    removed
}

/// Flushes a directory entry change (a rename, a removal) of `path` to disk.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(InstallError::io("syncing directory", dir))
}

/// Removes `path`; true when it was there.
pub fn remove_if_present(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(InstallError::io("removing", path)(e)),
    }
}

/// A hidden name in the same directory (a rename stays on one filesystem), unique to this
/// process and call: two installers in two containers may both be pid 1.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    parent(path).join(format!(
        ".{name}.{}-{}-{nanos:x}{TEMP_SUFFIX}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh directory holding `name` with the text "old".
    fn dir_with(test: &str, name: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("meshcap-atomic-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join(name);
        std::fs::write(&target, "old").unwrap();
        (dir, target)
    }

    /// The names in `dir`, sorted.
    pub(in crate::cni::install) fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_with_exact_mode_and_leaves_no_temp() {
        let (dir, target) = dir_with("replace", "a.conflist");
        write(&target, 0o600, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(names(&dir), ["a.conflist"]);
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

    #[test]
    fn temp_names_are_unique_and_hidden() {
        let a = temp_path(Path::new("/x/10-a.conflist"));
        let b = temp_path(Path::new("/x/10-a.conflist"));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".10-a.conflist.") && name.ends_with(TEMP_SUFFIX));
    }

    #[test]
    fn only_old_unlocked_temporary_files_are_stale() {
        let (dir, _) = dir_with("stale", "meshcap-cni");
        // Killed midway: unlocked.
        let dead = dir.join(".meshcap-cni.1-0-0.meshcap-tmp");
        std::fs::write(&dead, vec![0u8; 4096]).unwrap();
        // Being written right now by a live writer: locked.
        let live = Temp::create(&dir.join("meshcap-cni"), 0o755).unwrap();
        // Not ours at all.
        let foreign = dir.join(".cache");
        std::fs::write(&foreign, "").unwrap();
        // Just changed: possibly not locked yet, left alone.
        assert_eq!(remove_stale(&dir), 0);
        assert!(dead.exists());

        assert_eq!(remove_unlocked(&dir, Duration::ZERO), 1);
        assert!(!dead.exists());
        assert!(live.path.exists() && foreign.exists());
        drop(live);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
