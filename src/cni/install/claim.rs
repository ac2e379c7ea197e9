//! Which of several installers on one node keeps it (two DaemonSets, or two versions of one
//! overlapping during a rollout): the newest. Each `install --watch` writes its claim to
//! `.meshcap-cni.installer` in the configuration directory when it starts; the last one written
//! is the node's installer. One that finds another's claim stops writing anything and, on
//! SIGTERM, leaves the node installed for the other. When the claim disappears (its installer
//! uninstalled on exit, or `meshcap cni uninstall` ran), the remaining ones claim the node again
//! and the last of them keeps it. So two installers with different stanzas never take turns
//! rewriting the network configuration.

use super::atomic;
use super::guarded::{self, Snapshot};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A hidden name no runtime loads.
pub const FILE: &str = ".meshcap-cni.installer";

/// This installer's claim.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    record: Record,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// Unique per process: host name (the pod's name), pid and start time.
    id: String,
    /// For the log lines of the others.
    installer: String,
}

/// Who holds the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    This,
    /// Another installer, as it describes itself.
    Other(String),
    /// No claim (or an unreadable one).
    Nobody,
}

impl Claim {
    pub fn new(conf_dir: &Path) -> Claim {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let pid = std::process::id();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Claim {
            path: conf_dir.join(FILE),
            record: Record {
                id: format!("{host}/{pid}/{}", started.as_nanos()),
                installer: format!(
                    "pid {pid} on host {host:?}, started at {} (Unix time)",
                    started.as_secs()
                ),
            },
        }
    }

    /// Makes this installer the node's installer.
    pub fn assert(&self) -> super::error::Result<()> {
        let text = serde_json::to_string(&self.record).expect("strings serialize") + "\n";
        atomic::write(&self.path, 0o644, text.as_bytes())
    }

    pub fn holder(&self) -> Holder {
        let Ok(text) = std::fs::read(&self.path) else {
            return Holder::Nobody;
        };
        match serde_json::from_slice::<Record>(&text) {
            Ok(record) if record.id == self.record.id => Holder::This,
            Ok(record) => Holder::Other(record.installer),
            Err(_) => Holder::Nobody,
        }
    }

    /// Removes the claim if it still is this installer's.
    pub fn release(&self) {
        if let Ok(read) = Snapshot::read(&self.path) {
            let ours = serde_json::from_slice::<Record>(&read.bytes)
                .is_ok_and(|record| record.id == self.record.id);
            if ours {
                if let Err(e) = guarded::remove(&self.path, &read) {
                    tracing::warn!("{e}");
                }
            }
        }
    }
}

/// Removes whatever claim there is (`meshcap cni uninstall`).
pub fn remove(conf_dir: &Path) {
    if let Err(e) = super::remove_if_present(&conf_dir.join(FILE)) {
        tracing::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_claim_holds_the_node() {
        let dir = std::env::temp_dir().join(format!("meshcap-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (Claim::new(&dir), Claim::new(&dir));
        assert_eq!(first.holder(), Holder::Nobody);
        first.assert().unwrap();
        assert_eq!(first.holder(), Holder::This);
        second.assert().unwrap();
        assert_eq!(second.holder(), Holder::This);
        let Holder::Other(other) = first.holder() else {
            panic!("the first still holds the node")
        };
        assert!(
            other.contains(&format!("pid {}", std::process::id())),
            "{other}"
        );
        // Releasing someone else's claim does nothing.
        first.release();
        assert_eq!(second.holder(), Holder::This);
        second.release();
        assert_eq!(first.holder(), Holder::Nobody);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
