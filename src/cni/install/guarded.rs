//! Edits of files that other writers rewrite too (the primary CNI's configuration list, which
//! its owner replaces on every upgrade), made so that no other writer's version is ever lost.
//!
//! A plain read, edit, rename loses a version written between the read and the rename, and as
//! the result still holds meshcap's stanza nothing would ever repair it. Here every edit
//! 1. writes the new version to a temporary file beside the target (through a symlink: beside
//!    the link's target, which stays a link);
//! 2. checks that the target is still what was read (device, inode, size, mtime and bytes), and
//!    starts over from the newer version if not;
//! 3. swaps the temporary file and the target with `renameat2(RENAME_EXCHANGE)`, which leaves
//!    whatever the target held at that instant under the temporary name;
//! 4. checks that displaced file once more. It is what was read, and is removed; or a writer got
//!    in between 2 and 3, and then the displaced file is that writer's newer version: the edit
//!    is made again onto it and swapped in, now expecting meshcap's own file at the target. A
//!    newer version that needs no edit, or that the edit fails on (half written), is swapped
//!    back in itself, the same file.
//!
//! So at every instant the newest version of every other writer is either at the target or
//! held under a temporary name to be edited and put back; nothing is lost whichever instant
//! another rename lands in. (Only a writer that rewrites the same inode in place while meshcap
//! swaps it out can still lose a write; runtimes may read such a writer's file half-written
//! anyway.) On a filesystem without `RENAME_EXCHANGE` step 3 is a plain rename, right after the
//! check of step 2.

use super::atomic::{self, Temp};
use super::error::{InstallError, Result};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many times an edit starts over because the file changed under it before it gives up
/// until the next change (the file's owner is still writing).
const ROUNDS: usize = 20;

/// A file's contents and the identity of the version they came from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub bytes: Vec<u8>,
    pub mode: u32,
    uid: u32,
    gid: u32,
    version: Version,
}

/// What changes when a file is replaced or rewritten (a rename keeps all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Version {
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

impl Snapshot {
    /// Reads `path` (following symlinks), again if it changed while being read.
    pub fn read(path: &Path) -> io::Result<Snapshot> {
        let mut file = File::open(path)?;
        let mut last = None;
        for _ in 0..3 {
            let before = file.metadata()?;
            let mut bytes = Vec::with_capacity(before.size() as usize);
            (&file).read_to_end(&mut bytes)?;
            let after = file.metadata()?;
            let snapshot = Snapshot {
                bytes,
                mode: after.mode() & 0o7777,
                uid: after.uid(),
                gid: after.gid(),
                version: Version::of(&after),
            };
            if Version::of(&before) == snapshot.version {
                return Ok(snapshot);
            }
            last = Some(snapshot);
            file = File::open(path)?;
        }
        Ok(last.expect("read at least once"))
    }

    fn read_opt(path: &Path) -> io::Result<Option<Snapshot>> {
        match Snapshot::read(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The same version: nothing was written in between.
    fn same(&self, other: &Snapshot) -> bool {
        self.version == other.version && self.bytes == other.bytes
    }
}

/// Where edits of `path` are written: the file itself, or a symlink's final target (the link is
/// never replaced by a file).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::symlink_metadata(path).map_err(InstallError::io("reading", path))?;
    if !meta.file_type().is_symlink() {
        return Ok(path.to_owned());
    }
    std::fs::canonicalize(path).map_err(InstallError::io("following the symlink", path))
}

/// Whether `path` is a symlink.
pub fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Rewrites `path` with what `edit` makes of its current bytes (`None`: fine as it is), never
/// losing a version another writer puts there meanwhile: `edit` is then run again on that
/// version, and a version `edit` leaves alone or fails on goes back as it is (the same file).
/// Returns whether the file was edited.
pub fn edit(path: &Path, mut edit: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>) -> Result<bool> {
    let target = resolve(path)?;
    let io_err = |action| InstallError::io(action, &target);
    // The newest version of the other writers known here.
    let mut basis = Snapshot::read(&target).map_err(io_err("reading"))?;
    // Set when `basis` was swapped out of the target.
    let mut held: Option<Held> = None;
    for round in 0.. {
        let expected = held.as_ref().map_or(&basis, |held| &held.at_target).clone();
        // What goes into the target this round, what it is, and an error to return once
        // another writer's version held here is back in place.
        let (source, swapped_in, failed) = match (edit(&basis.bytes), held.take()) {
            (Ok(None), None) => return Ok(false),
            (Err(e), None) => return Err(e),
            (Ok(None), Some(older)) => (Source::Held(older.into_path()), basis.clone(), None),
            (Err(e), Some(older)) => (Source::Held(older.into_path()), basis.clone(), Some(e)),
            (Ok(Some(bytes)), older) => {
                if round >= ROUNDS && older.is_none() {
                    return Err(InstallError::KeepsChanging(path.to_owned()));
                }
                match write_temp(&target, &basis, bytes) {
                    Ok((temp, ours)) => {
                        // Removed once the edit of it is in place.
                        held = older;
                        (Source::Temp(temp), ours, None)
                    }
                    Err(e) => match older {
                        None => return Err(e),
                        Some(older) => (Source::Held(older.into_path()), basis.clone(), Some(e)),
                    },
                }
            }
        };
        let now = Snapshot::read_opt(&target).map_err(io_err("reading"))?;
        if !now.as_ref().is_some_and(|now| now.same(&expected)) {
            // Rewritten since it was read: the newer version supersedes everything held.
            source.discard();
            held = None;
            basis = now.ok_or_else(|| {
                io_err("editing")(io::Error::new(
                    io::ErrorKind::NotFound,
                    "removed while being edited",
                ))
            })?;
            continue;
        }
        #[cfg(test)]
        tests::before_swap(&target);
        let swapped = source.path().to_owned();
        let put_back = matches!(source, Source::Held(_));
        match renameat2(
            AT_FDCWD,
            &swapped,
            AT_FDCWD,
            &target,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => source.forget(),
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                // No exchange on this filesystem: a rename right after the check.
                std::fs::rename(&swapped, &target).map_err(io_err("writing"))?;
                source.forget();
                atomic::sync_dir(&target)?;
                return failed.map_or(Ok(!put_back), Err);
            }
            Err(e) => return Err(io_err("writing")(e.into())),
        }
        // The swapped name now holds what the target held at the swap.
        let displaced = Held {
            path: swapped,
            at_target: swapped_in,
        };
        let read_back = match Snapshot::read(&displaced.path) {
            Ok(read_back) => read_back,
            Err(e) => {
                // Left where it is (unread, it may be another writer's newest version).
                let _ = displaced.into_path();
                return Err(io_err("reading back")(e));
            }
        };
        if read_back.same(&expected) {
            drop(displaced);
            drop(held);
            atomic::sync_dir(&target)?;
            return failed.map_or(Ok(!put_back), Err);
        }
        tracing::debug!(
            "{} was rewritten while meshcap edited it: editing the newer version",
            path.display()
        );
        // Anything held before is older than the displaced version: removed.
        held = Some(displaced);
        basis = read_back;
    }
    unreachable!("the loop only returns")
}

/// Writes `bytes` as a new file at `path`, failing with `AlreadyExists` (and writing nothing)
/// if anything is there: a hard link is made only where no name exists.
pub fn create(path: &Path, mode: u32, bytes: &[u8]) -> Result<()> {
    let mut temp = Temp::create(path, mode)?;
    temp.fill(|file| io::Write::write_all(file, bytes))?;
    std::fs::hard_link(&temp.path, path).map_err(InstallError::io("creating", path))?;
    drop(temp);
    atomic::sync_dir(path)
}

/// Removes `path` if it still is `basis`; a newer version is left in place. Returns whether it
/// removed the file. A symlink itself is removed, not its target.
pub fn remove(path: &Path, basis: &Snapshot) -> Result<bool> {
    let aside = atomic::temp_path(path);
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(InstallError::io("removing", path)(e)),
    }
    let taken = Snapshot::read(&aside).map_err(InstallError::io("reading", &aside));
    let removed = taken.as_ref().is_ok_and(|taken| taken.same(basis));
    if !removed {
        // Rewritten since it was read: put it back, unless an even newer version is there.
        match std::fs::hard_link(&aside, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(InstallError::io("putting back", path)(e)),
        }
    }
    std::fs::remove_file(&aside).map_err(InstallError::io("removing", &aside))?;
    atomic::sync_dir(path)?;
    taken.map(|_| removed)
}

/// Moves `path` to `to` (replacing `to`) and returns what it moved: after the rename nobody
/// else writes it, so the snapshot is exactly the version taken.
pub fn take(path: &Path, to: &Path) -> Result<Snapshot> {
    std::fs::rename(path, to).map_err(InstallError::io("moving", path))?;
    atomic::sync_dir(to)?;
    Snapshot::read(to).map_err(InstallError::io("reading", to))
}

/// A temporary file beside `target` holding `bytes`, with the mode and owner of `like`, and
/// its snapshot.
fn write_temp(target: &Path, like: &Snapshot, bytes: Vec<u8>) -> Result<(Temp, Snapshot)> {
    let mut temp = Temp::create(target, like.mode)?;
    temp.fill(|file| io::Write::write_all(file, &bytes))?;
    // Keeps the owner's file owned as it was (a no-op when root writes a root's file; fails
    // harmlessly without the privilege).
    let _ = std::os::unix::fs::fchown(temp.file(), Some(like.uid), Some(like.gid));
    let meta = temp
        .file()
        .metadata()
        .map_err(InstallError::io("writing", &temp.path))?;
    let snapshot = Snapshot {
        version: Version::of(&meta),
        bytes,
        ..like.clone()
    };
    Ok((temp, snapshot))
}

/// What a round swaps into the target: a new temporary file, or a version of another writer's
/// held here, going back as it is.
enum Source {
    Temp(Temp),
    Held(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Temp(temp) => &temp.path,
            Source::Held(path) => path,
        }
    }

    /// Not swapped in after all: removed.
    fn discard(self) {
        if let Source::Held(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Swapped or renamed away: nothing to remove under its name.
    fn forget(self) {
        if let Source::Temp(temp) = self {
            temp.forget();
        }
    }
}

/// A file swapped out of the target (removed on drop: by then it is either edited and back in
/// place, or superseded by a newer version), and what was swapped in for it.
struct Held {
    path: PathBuf,
    at_target: Snapshot,
}

impl Held {
    /// Takes the file over from the guard (it is about to be swapped back in).
    fn into_path(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::atomic::tests::names;
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    /// Another writer, run in the window before a swap.
    type Writer = Box<dyn FnOnce(&Path)>;

    thread_local! {
        /// Runs between the check of step 2 and the swap: the window a racing writer hits.
        static BEFORE_SWAP: RefCell<Vec<Writer>> = RefCell::new(Vec::new());
    }

    pub(super) fn before_swap(target: &Path) {
        let next = BEFORE_SWAP.with(|hooks| hooks.borrow_mut().pop());
        if let Some(hook) = next {
            hook(target);
        }
    }

    /// Queues writers for the next swaps, the first one for the first swap.
    fn race(writers: Vec<Writer>) {
        BEFORE_SWAP.with(|hooks| *hooks.borrow_mut() = writers.into_iter().rev().collect());
    }

    /// Another writer's atomic replacement of `path` with `text`.
    fn replace(path: &Path, text: &str) {
        let temp = path.with_extension("other-writer");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, path).unwrap();
    }

    fn dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meshcap-guarded-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The edit the tests make: a line "+stanza" at the end, once.
    fn append(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Ok((!text.ends_with("+stanza\n")).then(|| format!("{text}+stanza\n").into_bytes()))
    }

    #[test]
    fn an_edit_keeps_mode_and_leaves_nothing_behind() {
        let dir = dir("plain");
        let file = dir.join("10-a.conflist");
        std::fs::write(&file, "v1\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        assert!(edit(&file, append).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "v1\n+stanza\n");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o640);
        assert!(!edit(&file, append).unwrap());
        assert_eq!(names(&dir), ["10-a.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewrite_before_the_check_is_edited_instead() {
        let dir = dir("before-check");
        let file = dir.join("10-a.conflist");
        std::fs::write(&file, "v1\n").unwrap();
        let mut calls = 0;
        let written = edit(&file, |bytes| {
            calls += 1;
            if calls == 1 {
                // The owner rewrites the file while meshcap prepares its edit.
                replace(&file, "v2\n");
            }
            append(bytes)
        })
        .unwrap();
        assert!(written);
        assert_eq!(calls, 2);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "v2\n+stanza\n");
        assert_eq!(names(&dir), ["10-a.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewrite_between_the_check_and_the_swap_is_not_lost() {
        let dir = dir("in-window");
        let file = dir.join("10-a.conflist");
        std::fs::write(&file, "v1\n").unwrap();
        race(vec![Box::new(|target| replace(target, "v2\n"))]);
        assert!(edit(&file, append).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "v2\n+stanza\n");
        assert_eq!(names(&dir), ["10-a.conflist"]);

        // Twice in a row, and the last version needing no edit: that very file goes back.
        std::fs::write(&file, "v3\n").unwrap();
        let v5 = Rc::new(Cell::new(0));
        let inode = v5.clone();
        race(vec![
            Box::new(|target| replace(target, "v4\n")),
            Box::new(move |target| {
                replace(target, "v5\n+stanza\n");
                inode.set(std::fs::metadata(target).unwrap().ino());
            }),
        ]);
        assert!(!edit(&file, append).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "v5\n+stanza\n");
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), v5.get());
        assert_eq!(names(&dir), ["10-a.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_version_the_edit_fails_on_goes_back_as_it_is() {
        let dir = dir("edit-fails");
        let file = dir.join("10-a.conflist");
        std::fs::write(&file, "v1\n").unwrap();
        // Half a file, as an owner writing in place may leave it for a moment.
        race(vec![Box::new(|target| replace(target, "{\"plug"))]);
        let strict = |bytes: &[u8]| match bytes.starts_with(b"v") {
            true => append(bytes),
            false => Err(InstallError::NotANetwork {
                path: PathBuf::from("10-a.conflist"),
                reason: "half written".into(),
            }),
        };
        let err = edit(&file, strict).unwrap_err();
        assert!(err.to_string().contains("half written"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"plug");
        assert_eq!(names(&dir), ["10-a.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_in_place_rewrite_in_the_window_is_not_lost() {
        let dir = dir("in-place");
        let file = dir.join("10-a.conflist");
        std::fs::write(&file, "v1\n").unwrap();
        race(vec![Box::new(|target| {
            std::fs::write(target, "v2-longer\n").unwrap()
        })]);
        assert!(edit(&file, append).unwrap());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "v2-longer\n+stanza\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_is_edited_at_its_target_and_stays_a_link() {
        let dir = dir("symlink");
        std::fs::create_dir(dir.join("owner")).unwrap();
        std::fs::create_dir(dir.join("net.d")).unwrap();
        let real = dir.join("owner/calico.conflist");
        std::fs::write(&real, "v1\n").unwrap();
        let link = dir.join("net.d/10-calico.conflist");
        std::os::unix::fs::symlink("../owner/calico.conflist", &link).unwrap();
        race(vec![Box::new(|target| replace(target, "v2\n"))]);
        assert!(edit(&link, append).unwrap());
        assert!(is_symlink(&link));
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "v2\n+stanza\n");
        assert_eq!(names(&dir.join("owner")), ["calico.conflist"]);
        assert_eq!(names(&dir.join("net.d")), ["10-calico.conflist"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_never_replaces_and_remove_keeps_a_newer_version() {
        let dir = dir("create-remove");
        let file = dir.join("10-a.conflist");
        create(&file, 0o644, b"mine\n").unwrap();
        let err = create(&file, 0o644, b"again\n").unwrap_err();
        assert!(
            matches!(&err, InstallError::Io { error, .. }
            if error.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine\n");

        let read = Snapshot::read(&file).unwrap();
        replace(&file, "theirs\n");
        assert!(!remove(&file, &read).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "theirs\n");
        let read = Snapshot::read(&file).unwrap();
        assert!(remove(&file, &read).unwrap());
        assert!(names(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
