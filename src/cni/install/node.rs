//! One pass of installing or removing everything meshcap-cni needs on a node: the binary, the
//! kubeconfig and the stanza in the primary network configuration.

use super::binary;
use super::confdir::{self, NetworkFile};
use super::conflist;
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
    /// Brings the node to the installed state. The network configuration is read and edited
    /// first, so a malformed or missing one fails before anything is written.
    pub fn run(&self) -> Result<Changes> {
        let primary = NetworkFile::read(&confdir::primary(&self.paths.conf_dir)?)?;
        let edited =
            conflist::insert(primary.document.clone(), &self.stanza).map_err(|reason| {
                InstallError::NotANetwork {
                    path: primary.path.clone(),
                    reason,
                }
            })?;
        let account = ServiceAccount::read(&self.service_account_dir)?;

        let binary = binary::install(&self.binary_source, &self.paths.bin_dir)?;
        let text = kubeconfig::render(&self.server, &account);
        let kubeconfig = kubeconfig::install(&self.paths.kubeconfig(), &text)?;
        let network = match edited.changed {
            true => Some(primary.replace(&edited.document)?),
            false => None,
        };
        Ok(Changes {
            binary,
            kubeconfig,
            network,
        })
    }
}

/// What an uninstall removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub binary: bool,
    pub kubeconfig: bool,
    /// The network configuration files the stanza was taken out of.
    pub networks: Vec<PathBuf>,
}

/// Removes what [`Install::run`] added: the stanza from every network file holding it (the
/// primary network may have changed since), the kubeconfig and the binary. A file converted
/// from a single `.conf` stays a `.conflist` of that one plugin, as Istio's install-cni leaves
/// it: libcni loads both the same way. Unreadable files are left alone: they cannot hold a
/// stanza this installer wrote.
pub fn uninstall(paths: &Paths) -> Result<Removed> {
    let mut removed = Removed::default();
    for path in confdir::network_files(&paths.conf_dir)? {
        let file = match NetworkFile::read(&path) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!("left alone: {e}");
                continue;
            }
        };
        let edited = conflist::remove(file.document.clone()).map_err(|reason| {
            InstallError::NotANetwork {
                path: path.clone(),
                reason,
            }
        })?;
        if edited.changed {
            file.replace(&edited.document)?;
            removed.networks.push(path);
        }
    }
    removed.kubeconfig = super::remove_if_present(&paths.kubeconfig())?;
    removed.binary = binary::uninstall(&paths.bin_dir)?;
    Ok(removed)
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
