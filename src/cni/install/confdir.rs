//! The node's CNI configuration directory as libcni reads it: which files are network
//! configurations, which one is the primary network, and meshcap's stanza put into one and
//! taken out again, each edit guarded against other writers ([`guarded`]).
//!
//! A single plugin's `X.conf` (or `X.json`) becomes `X.conflist` holding it and the stanza; the
//! original file is kept aside as `.X.conf.meshcap-converted` (a name no runtime loads), which
//! also marks `X.conflist` as meshcap's. Uninstall puts `X.conf` back when the list holds
//! nothing else, and an existing `X.conflist` that is not meshcap's is never overwritten.

use super::conflist::{self, Edited, Shape};
use super::error::{InstallError, Result};
use super::guarded::{self, Snapshot};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The extensions container runtimes load (containerd and CRI-O through libcni's ConfFiles).
pub const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// The network configuration files of `dir`, in the lexical order of their names (the order
/// runtimes try them in; the first is the node's primary network).
pub fn network_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(InstallError::io("reading directory", dir))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(InstallError::io("reading directory", dir))?;
        let path = entry.path();
        let loaded = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // Like libcni: anything but a directory (a symlink to a file counts).
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if loaded && !is_dir {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The node's primary network configuration: the first network file of `dir`.
pub fn primary(dir: &Path) -> Result<PathBuf> {
    network_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoNetwork(dir.to_owned()))
}

/// A network configuration file as read.
#[derive(Debug)]
pub struct NetworkFile {
    pub path: PathBuf,
    pub document: Value,
    pub shape: Shape,
}

impl NetworkFile {
    pub fn read(path: &Path) -> Result<NetworkFile> {
        let text = std::fs::read(path).map_err(InstallError::io("reading", path))?;
        let document = parse(path, &text)?;
        let shape = conflist::shape(&document).map_err(|reason| InstallError::NotANetwork {
            path: path.to_owned(),
            reason,
        })?;
        Ok(NetworkFile {
            path: path.to_owned(),
            document,
            shape,
        })
    }

    /// Where the file's list lives after an edit: a single plugin's `X.conf` or `X.json`
    /// becomes `X.conflist` (the runtimes read a list only from `.conflist`).
    pub fn list_path(&self) -> PathBuf {
        match self.shape {
            Shape::List => self.path.clone(),
            Shape::Single => self.path.with_extension("conflist"),
        }
    }

    /// Fails as [`add_stanza`] would before it writes anything: a document meshcap cannot
    /// chain into, a symlinked single plugin, a `.conflist` of someone else's in the way.
    pub fn check_add(&self, stanza: &Value) -> Result<()> {
        conflist::insert(self.document.clone(), stanza).map_err(|reason| {
            InstallError::NotANetwork {
                path: self.path.clone(),
                reason,
            }
        })?;
        if self.shape == Shape::Single {
            if guarded::is_symlink(&self.path) {
                return Err(InstallError::SymlinkedSingle(self.path.clone()));
            }
            let list = self.list_path();
            if std::fs::symlink_metadata(&list).is_ok() && !record_path(&self.path).exists() {
                return Err(InstallError::ListExists {
                    conf: self.path.clone(),
                    list,
                });
            }
        }
        Ok(())
    }
}

/// Puts `stanza` last into the network configuration at `path`. Returns the file written, if
/// any (a converted single plugin's new `.conflist`).
pub fn add_stanza(path: &Path, stanza: &Value) -> Result<Option<PathBuf>> {
    let file = NetworkFile::read(path)?;
    file.check_add(stanza)?;
    match file.shape {
        Shape::List => {
            let insert = |bytes: &[u8]| edit_document(path, bytes, |d| conflist::insert(d, stanza));
            Ok(guarded::edit(path, insert)?.then(|| path.to_owned()))
        }
        Shape::Single => convert(&file, stanza),
    }
}

/// `X.conf` to `X.conflist`: the list is written first (the directory never lacks the
/// network), then `X.conf` is moved aside as the record of the conversion. Should its owner
/// have rewritten it in between, the list follows the version moved.
fn convert(conf: &NetworkFile, stanza: &Value) -> Result<Option<PathBuf>> {
    let list = conf.list_path();
    let record = record_path(&conf.path);
    let read = Snapshot::read(&conf.path).map_err(InstallError::io("reading", &conf.path))?;
    let Some(single) = single_plugin(&conf.path, &read.bytes)? else {
        // Rewritten as a list since it was checked: the next pass sees it as such.
        return Ok(None);
    };
    if std::fs::symlink_metadata(&list).is_ok() {
        follow(&list, &single, stanza)?;
    } else {
        let edited =
            conflist::insert(single, stanza).map_err(|reason| InstallError::NotANetwork {
                path: conf.path.clone(),
                reason,
            })?;
        let text = conflist::render(&edited.document);
        match guarded::create(&list, read.mode, text.as_bytes()) {
            Err(InstallError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                return Err(InstallError::ListExists {
                    conf: conf.path.clone(),
                    list,
                });
            }
            other => other?,
        }
    }
    let taken = guarded::take(&conf.path, &record)?;
    if taken.bytes != read.bytes {
        match single_plugin(&conf.path, &taken.bytes) {
            Ok(Some(single)) => drop(follow(&list, &single, stanza)?),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(Some(list))
}

/// The single plugin's configuration in `bytes`; `None` when it is a list.
fn single_plugin(path: &Path, bytes: &[u8]) -> Result<Option<Value>> {
    let document = parse(path, bytes)?;
    match conflist::shape(&document) {
        Ok(Shape::Single) => Ok(Some(document)),
        Ok(Shape::List) => Ok(None),
        Err(reason) => Err(InstallError::NotANetwork {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// Makes meshcap's conversion `list` follow a new version of the single plugin it was made
/// from: that plugin first, plugins someone else chained into the list kept, the stanza last.
fn follow(list: &Path, single: &Value, stanza: &Value) -> Result<bool> {
    guarded::edit(list, |bytes| {
        let merged = match serde_json::from_slice::<Value>(bytes) {
            Ok(current) if conflist::shape(&current) == Ok(Shape::List) => {
                conflist::with_first(current, single.clone())
            }
            _ => conflist::as_list(single.clone()),
        };
        let edited =
            conflist::insert(merged, stanza).map_err(|reason| InstallError::NotANetwork {
                path: list.to_owned(),
                reason,
            })?;
        let text = conflist::render(&edited.document).into_bytes();
        Ok((text != bytes).then_some(text))
    })
}

/// What taking the stanza out did to a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// The stanza taken out of the list, everything else kept.
    Edited,
    /// The list held nothing but the stanza: removed.
    Dropped,
    /// The list was meshcap's conversion of this single plugin's file: that file is back.
    Restored(PathBuf),
}

/// Takes meshcap's stanza out of the network configuration at `path`; `None` when it held
/// none. A symlinked list is edited through the link and never removed.
pub fn remove_stanza(path: &Path) -> Result<Option<Removal>> {
    for _ in 0..5 {
        let target = guarded::resolve(path)?;
        let read = Snapshot::read(&target).map_err(InstallError::io("reading", path))?;
        let edited = removed(path, &read.bytes)?;
        if !edited.changed {
            return Ok(None);
        }
        let symlink = target != path;
        if let Some((conf, record, original)) = restorable(path, &edited.document) {
            if symlink {
                forget(&record);
            } else {
                // The original first: it sorts before the list, so it is the primary network
                // at once; an owner's newer X.conf stays as it is.
                let linked = match std::fs::hard_link(&record, &conf) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(InstallError::io("restoring", &conf)(e)),
                };
                if guarded::remove(path, &read)? {
                    forget(&record);
                    return Ok(Some(Removal::Restored(conf)));
                }
                // The list changed meanwhile: it is no longer only the conversion.
                if linked {
                    guarded::remove(&conf, &original)?;
                }
                continue;
            }
        }
        if conflist::is_empty_list(&edited.document) {
            if symlink {
                tracing::warn!(
                    "{} holds only meshcap's stanza but is a symlink: left as it is",
                    path.display()
                );
                return Ok(None);
            }
            if guarded::remove(path, &read)? {
                forget_records(path);
                return Ok(Some(Removal::Dropped));
            }
            continue;
        }
        guarded::edit(path, |bytes| {
            edit_document(path, bytes, conflist::remove).map(|edit| {
                // A list emptied meanwhile is handled by the next round, not written.
                edit.filter(|text| {
                    serde_json::from_slice::<Value>(text)
                        .map_or(true, |d| !conflist::is_empty_list(&d))
                })
            })
        })?;
        if removed(
            path,
            &Snapshot::read(&target).map_or_else(|_| Vec::new(), |s| s.bytes),
        )
        .is_ok_and(|e| e.changed)
        {
            continue;
        }
        // Something else joined the converted list: it stays a list.
        forget_records(path);
        return Ok(Some(Removal::Edited));
    }
    Err(InstallError::KeepsChanging(path.to_owned()))
}

fn removed(path: &Path, bytes: &[u8]) -> Result<Edited> {
    let document = parse(path, bytes)?;
    match conflist::shape(&document) {
        Ok(Shape::List) => {}
        _ => {
            return Ok(Edited {
                document,
                changed: false,
            });
        }
    }
    conflist::remove(document).map_err(|reason| InstallError::NotANetwork {
        path: path.to_owned(),
        reason,
    })
}

/// The single plugin's file `list` was converted from, its record and the record's contents,
/// when `list` (the stanza taken out) is exactly that conversion.
fn restorable(list: &Path, without_stanza: &Value) -> Option<(PathBuf, PathBuf, Snapshot)> {
    CONVERTED.iter().find_map(|ext| {
        let conf = list.with_extension(ext);
        let record = record_path(&conf);
        let original = Snapshot::read(&record).ok()?;
        let document = serde_json::from_slice::<Value>(&original.bytes).ok()?;
        (conflist::as_list(document) == *without_stanza).then_some((conf, record, original))
    })
}

/// The extensions of single plugins' files that become a `.conflist`.
const CONVERTED: [&str; 2] = ["conf", "json"];

/// Where meshcap keeps a single plugin's `X.conf` it converted: `.X.conf.meshcap-converted`.
fn record_path(conf: &Path) -> PathBuf {
    let name = conf
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    conf.with_file_name(format!(".{name}.meshcap-converted"))
}

fn forget_records(list: &Path) {
    for ext in CONVERTED {
        forget(&record_path(&list.with_extension(ext)));
    }
}

fn forget(record: &Path) {
    match std::fs::remove_file(record) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", record.display()),
    }
}

/// The new text of the document in `bytes` after `edit`, or `None` when it is fine as it is.
fn edit_document(
    path: &Path,
    bytes: &[u8],
    edit: impl FnOnce(Value) -> std::result::Result<Edited, String>,
) -> Result<Option<Vec<u8>>> {
    let edited = edit(parse(path, bytes)?).map_err(|reason| InstallError::NotANetwork {
        path: path.to_owned(),
        reason,
    })?;
    Ok(edited
        .changed
        .then(|| conflist::render(&edited.document).into_bytes()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|error| InstallError::MalformedJson {
        path: path.to_owned(),
        error,
    })
}
