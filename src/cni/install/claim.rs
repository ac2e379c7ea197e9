//! Which of several installers on one node keeps it (two DaemonSets, or two versions of one
//! overlapping during a rollout): the newest. Each `install --watch` writes its claim to
//! `.meshcap-cni.installer` in the configuration directory when it starts; the last one written
//! is the node's installer. One that finds another's claim stops writing anything and, on
//! SIGTERM, leaves the node installed for the other. When the claim disappears (its installer
//! uninstalled on exit, or `meshcap cni uninstall` ran) or its installer is gone (killed: the
//! advisory lock it holds on its claim file from the moment it wrote it is free), the remaining
//! ones claim the node again and the last of them keeps it. So two installers with different
//! stanzas never take turns rewriting the network configuration.

use super::atomic::Temp;
use super::guarded::{self, Snapshot};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A hidden name no runtime loads.
pub const FILE: &str = ".meshcap-cni.installer";

/// This installer's claim.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    record: Record,
    /// Held on the claim file written last, for as long as this installer runs.
    lock: Option<Flock<File>>,
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
    /// Another installer that is gone without removing its claim (killed).
    Gone(String),
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
            lock: None,
        }
    }

    /// Makes this installer the node's installer.
    pub fn assert(&mut self) -> super::error::Result<()> {
        let text = serde_json::to_string(&self.record).expect("strings serialize") + "\n";
        // Locked from its creation on, so nobody takes it for a dead installer's.
        let mut temp = Temp::create(&self.path, 0o644)?;
        temp.fill(|file| std::io::Write::write_all(file, text.as_bytes()))?;
        self.lock = Some(temp.rename_locked(&self.path)?);
        Ok(())
    }

    pub fn holder(&self) -> Holder {
        let Ok(text) = std::fs::read(&self.path) else {
            return Holder::Nobody;
        };
        match serde_json::from_slice::<Record>(&text) {
            Ok(record) if record.id == self.record.id => Holder::This,
            Ok(record) if is_locked(&self.path) => Holder::Other(record.installer),
            Ok(record) => Holder::Gone(record.installer),
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

/// Whether a live installer holds the lock on the claim file at `path` (gone: free, or
/// replaced in between, which the next look sees).
fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return true;
    };
    Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
}

/// Removes whatever claim there is (`meshcap cni uninstall`).
pub fn remove(conf_dir: &Path) {
    if let Err(e) = super::atomic::remove_if_present(&conf_dir.join(FILE)) {
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
        let (mut first, mut second) = (Claim::new(&dir), Claim::new(&dir));
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
        // The second one dies without removing its claim: its lock goes with it.
        let lock = second.lock.take();
        drop(lock);
        assert!(matches!(first.holder(), Holder::Gone(_)));
        second.assert().unwrap();
        // Releasing someone else's claim does nothing.
        first.release();
        assert_eq!(second.holder(), Holder::This);
        second.release();
        assert_eq!(first.holder(), Holder::Nobody);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
