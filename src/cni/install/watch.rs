//! `install --watch`: keep the node installed until SIGTERM. Other CNIs rewrite their
//! configuration on upgrade (dropping the stanza), a newer primary network can appear, the
//! kubelet rotates the service account token: each shows as an inotify event in one of the
//! watched directories, and every event (or the periodic resync) runs the idempotent install
//! pass again, which rewrites only what differs. Signals arrive on a signalfd, so one `poll`
//! waits for both.
//!
//! With several installers on the node, only the newest writes ([`super::claim`]); the others
//! wait, and on SIGTERM leave everything installed for it.

use super::claim::{Claim, Holder};
use super::error::InstallError;
use super::guarded;
use super::node::{self, Install};
use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

/// Watches until SIGTERM or SIGINT, then uninstalls unless `keep_on_exit`.
pub fn run(install: &Install, resync: Duration, keep_on_exit: bool) -> anyhow::Result<()> {
    // Blocked before the first pass, so a SIGTERM during it waits on the signalfd.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")?;

    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .context("creating an inotify instance")?;
    // Replacements arrive as renames (atomic writers, the kubelet's `..data` symlink swap),
    // in-place rewrites as close-after-write.
    let changes = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB;
    for dir in [
        &install.paths.conf_dir,
        &install.paths.bin_dir,
        &install.service_account_dir,
    ] {
        inotify
            .add_watch(dir, changes)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    let timeout = PollTimeout::try_from(resync).unwrap_or(PollTimeout::MAX);
    let mut claim = Claim::new(&install.paths.conf_dir);
    claim.assert().context("claiming the node")?;
    let mut yielded_to: Option<String> = None;

    loop {
        if keeps_node(&mut claim, &mut yielded_to) {
            reconcile(install);
            watch_link_target(&inotify, install, changes);
        }
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for changes"),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        if ready(&fds[1]) {
            if let Ok(Some(info)) = signal_fd.read_signal() {
                let name = Signal::try_from(info.ssi_signo as i32)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal");
                tracing::info!("{name} received: stopping");
            }
            break;
        }
        if ready(&fds[0]) {
            drain(&inotify).context("reading inotify events")?;
        }
    }

    if let Holder::Other(other) = claim.holder() {
        tracing::info!("not uninstalling: the node is installed by {other}");
        return Ok(());
    }
    if keep_on_exit {
        tracing::info!("--keep-on-exit: meshcap-cni stays installed");
        claim.release();
        return Ok(());
    }
    let removed = node::uninstall(&install.paths).context("uninstalling on exit")?;
    removed.log();
    // Last: another installer waiting for the node takes it over once this claim is gone.
    claim.release();
    Ok(())
}

/// Whether this installer keeps the node: it holds the claim, or claims the node again when
/// the installer it yielded to has left. `yielded_to` says whom it yields to, for the logs.
fn keeps_node(claim: &mut Claim, yielded_to: &mut Option<String>) -> bool {
    let left = match claim.holder() {
        Holder::This => return true,
        Holder::Other(other) => {
            if yielded_to.as_ref() != Some(&other) {
                tracing::warn!(
                    "another meshcap-cni installer ({other}) started on this node after this one: \
                     it keeps the node; this one stops writing and leaves everything installed on \
                     exit"
                );
            }
            *yielded_to = Some(other);
            return false;
        }
        Holder::Gone(other) => Some(format!("({other}) is gone without uninstalling")),
        Holder::Nobody => yielded_to
            .as_ref()
            .map(|other| format!("({other}) has left")),
    };
    if let Some(left) = left {
        tracing::info!("the installer this one yielded to {left}: claiming the node");
    }
    *yielded_to = None;
    if let Err(e) = claim.assert() {
        tracing::warn!("claiming the node: {e}");
    }
    true
}

/// One install pass; failures are logged and retried on the next change, since what they wait
/// for (a primary network, a fixed file, a mounted token) arrives as one.
fn reconcile(install: &Install) {
    match install.run() {
        Ok(changes) => changes.log(),
        Err(e @ InstallError::NoNetwork(_)) => tracing::info!("waiting: {e}"),
        Err(e) => tracing::warn!("install failed, retrying on the next change: {e}"),
    }
}

/// A symlinked primary network is edited at the link's target: that directory is watched too,
/// so the owner rewriting the target is seen as soon as a rewrite of the link would be.
fn watch_link_target(inotify: &Inotify, install: &Install, changes: AddWatchFlags) {
    let Ok(primary) = super::confdir::primary(&install.paths.conf_dir) else {
        return;
    };
    if !guarded::is_symlink(&primary) {
        return;
    }
    if let Some(dir) = guarded::resolve(&primary)
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        // Adding the same directory again only returns its existing watch.
        if let Err(e) = inotify.add_watch(dir, changes) {
            tracing::warn!("watching {}: {e}", dir.display());
        }
    }
}

/// Consumes all queued events: what changed matters less than that something did.
fn drain(inotify: &Inotify) -> nix::Result<()> {
    loop {
        match inotify.read_events() {
            Ok(events) if !events.is_empty() => {}
            Ok(_) | Err(Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
