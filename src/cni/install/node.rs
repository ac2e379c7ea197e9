//! One pass of installing or removing everything meshcap-cni needs on a node: the binary, the
//! kubeconfig and the stanza in the primary network configuration.

use super::atomic;
use super::binary;
use super::confdir::{self, NetworkFile, Removal};
use super::error::{InstallError, Result};
use super::kubeconfig::{self, ServiceAccount};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where things live, as the installer's container sees them.
#[derive(Debug, Clone)]
pub struct Paths {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub kubeconfig_name: String,
}

impl Paths {
    pub fn kubeconfig(&self) -> PathBuf {
        self.conf_dir.join(&self.kubeconfig_name)
    }
}

/// Everything an install writes.
#[derive(Debug, Clone)]
pub struct Install {
    pub paths: Paths,
    /// The executable copied as `meshcap-cni`.
    pub binary_source: PathBuf,
    pub service_account_dir: PathBuf,
    /// The API server's URL, as the kubeconfig names it.
    pub server: String,
    /// meshcap's stanza, naming the kubeconfig by its path on the host.
    pub stanza: Value,
}

/// What a pass changed; all false when everything was in place.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub binary: bool,
    pub kubeconfig: bool,
    /// The network configuration file rewritten, if one was.
    pub network: Option<PathBuf>,
}

impl Install {
    /// Brings the node to the installed state. The network configuration is read and checked
    /// first, so a malformed or missing one fails before anything is written; it is edited
    /// last, guarded against its owner rewriting it meanwhile.
    pub fn run(&self) -> Result<Changes> {
        self.paths.remove_stale();
        let primary = NetworkFile::read(&confdir::primary(&self.paths.conf_dir)?)?;
        primary.check_add(&self.stanza)?;
        let account = ServiceAccount::read(&self.service_account_dir)?;

        let binary = binary::install(&self.binary_source, &self.paths.bin_dir)?;
        let text = kubeconfig::render(&self.server, &account);
        let kubeconfig = kubeconfig::install(&self.paths.kubeconfig(), &text)?;
        let network = confdir::add_stanza(&primary.path, &self.stanza)?;
        Ok(Changes {
            binary,
            kubeconfig,
            network,
        })
    }
}

impl Paths {
    /// Removes temporary files an installer killed midway left in the node's directories.
    fn remove_stale(&self) {
        atomic::remove_stale(&self.conf_dir);
        atomic::remove_stale(&self.bin_dir);
    }
}

/// What an uninstall removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub binary: bool,
    pub kubeconfig: bool,
    /// The network configuration files the stanza was taken out of, and how.
    pub networks: Vec<(PathBuf, Removal)>,
}

/// Removes what [`Install::run`] added: the stanza from every network file holding it (the
/// primary network may have changed since), the kubeconfig and the binary. A list that held
/// nothing but the stanza is removed; a single plugin's `.conf` that install turned into a
/// `.conflist` comes back as it was, unless something else joined the list meanwhile.
/// Unreadable files are left alone: they cannot hold a stanza this installer wrote.
pub fn uninstall(paths: &Paths) -> Result<Removed> {
    paths.remove_stale();
    let mut removed = Removed::default();
    for path in confdir::network_files(&paths.conf_dir)? {
        if let Err(e) = NetworkFile::read(&path) {
            tracing::warn!("left alone: {e}");
            continue;
        }
        if let Some(how) = confdir::remove_stanza(&path)? {
            removed.networks.push((path, how));
        }
    }
    removed.kubeconfig = atomic::remove_if_present(&paths.kubeconfig())?;
    removed.binary = binary::uninstall(&paths.bin_dir)?;
    Ok(removed)
}

impl Changes {
    /// Says what the pass changed (debug when nothing did).
    pub fn log(&self) {
        if self.binary {
            tracing::info!("installed the plugin binary {}", crate::cni::PLUGIN_NAME);
        }
        if self.kubeconfig {
            tracing::info!("wrote the plugin's kubeconfig");
        }
        if let Some(path) = &self.network {
            tracing::info!("added meshcap's stanza to {}", path.display());
        }
        if *self == Changes::default() {
            tracing::debug!("meshcap-cni is installed; nothing changed");
        }
    }
}

impl Removed {
    /// Says what the uninstall removed.
    pub fn log(&self) {
        for (path, how) in &self.networks {
            match how {
                Removal::Edited => {
                    tracing::info!("removed meshcap's stanza from {}", path.display())
                }
                Removal::Dropped => tracing::info!(
                    "removed {}: it held nothing but meshcap's stanza",
                    path.display()
                ),
                Removal::Restored(conf) => tracing::info!(
                    "restored {} and removed {}, which meshcap had made of it",
                    conf.display(),
                    path.display()
                ),
            }
        }
        if self.kubeconfig {
            tracing::info!("removed the plugin's kubeconfig");
        }
        if self.binary {
            tracing::info!("removed the plugin binary");
        }
    }
}

/// Whether `dir` exists as a directory, with a clear error when not.
pub fn require_dir(dir: &Path, what: &'static str) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InstallError::io(what, dir)(std::io::Error::other(
            "not a directory",
        ))),
        Err(e) => Err(InstallError::io(what, dir)(e)),
    }
}
