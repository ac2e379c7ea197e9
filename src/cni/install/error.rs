//! What can go wrong while installing or removing meshcap-cni on a node.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    // The causes are part of the messages (no #[source]): each message is whole, printed alone
    // or at the end of an anyhow chain.
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "no network configuration (.conf, .conflist or .json) in {}: the node's primary CNI has \
         not written its configuration yet (--watch waits for it)",
        .0.display()
    )]
    NoNetwork(PathBuf),
    #[error("{}: not valid JSON ({error}); nothing was changed", path.display())]
    MalformedJson {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{}: not a CNI network configuration: {reason}; nothing was changed", path.display())]
    NotANetwork { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    ServiceAccount { path: PathBuf, reason: String },
    #[error(
        "{}: rewritten by another writer on every attempt to edit it; its version is kept, \
         meshcap retries on the next change",
        .0.display()
    )]
    KeepsChanging(PathBuf),
    #[error(
        "{}: a single plugin's configuration becomes {} with meshcap's stanza, but that file \
         exists already and is not meshcap's; nothing was changed (remove one of the two)",
        conf.display(),
        list.display()
    )]
    ListExists { conf: PathBuf, list: PathBuf },
    #[error(
        "{}: a symlink to a single plugin's configuration; adding meshcap's stanza would replace \
         the link with a .conflist, so nothing was changed (link a .conflist instead)",
        .0.display()
    )]
    SymlinkedSingle(PathBuf),
}

impl InstallError {
    /// An I/O error with what was being done and to which file.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| InstallError::Io {
            action,
            path,
            error,
        }
    }
}

pub type Result<T> = std::result::Result<T, InstallError>;
