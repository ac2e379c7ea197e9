//! The node's CNI configuration directory as libcni reads it: which files are network
//! configurations, which one is the primary network, and replacing one atomically.

use super::atomic;
use super::conflist::{self, Shape};
use super::error::{InstallError, Result};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
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
    /// Permission bits, kept when the file is rewritten.
    pub mode: u32,
}

impl NetworkFile {
    pub fn read(path: &Path) -> Result<NetworkFile> {
        let text = std::fs::read(path).map_err(InstallError::io("reading", path))?;
        let document: Value =
            serde_json::from_slice(&text).map_err(|error| InstallError::MalformedJson {
                path: path.to_owned(),
                error,
            })?;
        let shape = conflist::shape(&document).map_err(|reason| InstallError::NotANetwork {
            path: path.to_owned(),
            reason,
        })?;
        let mode = std::fs::metadata(path)
            .map_err(InstallError::io("reading", path))?
            .permissions()
            .mode()
            & 0o7777;
        Ok(NetworkFile {
            path: path.to_owned(),
            document,
            shape,
            mode,
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

    /// Replaces the file with `document` (a list); a single plugin's file is replaced by its
    /// `.conflist` (written first, so the directory never lacks the network) and removed.
    /// Returns the list's path.
    pub fn replace(&self, document: &Value) -> Result<PathBuf> {
        let target = self.list_path();
        atomic::write(&target, self.mode, conflist::render(document).as_bytes())?;
        if target != self.path {
            std::fs::remove_file(&self.path).map_err(InstallError::io("removing", &self.path))?;
            atomic::sync_dir(&self.path)?;
        }
        Ok(target)
    }
}
