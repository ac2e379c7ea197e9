//! Waiting for trace messages: a netlink socket in the nftables trace group
//! (`NFNLGRP_NFTRACE`) and the stop signals (SIGINT, SIGTERM, SIGHUP) as a signalfd, polled
//! together, so a signal ends the wait like any other event and the caller cleans up.

use crate::backend::nftables::socket::messages;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Room for many queued trace messages: a busy namespace sends several per packet and hook.
const RECV_BUFFER: usize = 4 * 1024 * 1024;
/// One datagram at most.
const DATAGRAM: usize = 256 * 1024;

/// What ended a wait.
pub enum Wake {
    Messages(Vec<Vec<u8>>),
    Signal(Signal),
    /// The kernel dropped messages: the receive buffer overflowed.
    Overrun,
    Timeout,
}

pub struct Listener {
    sock: Socket,
    signals: SignalFd,
    buf: Vec<u8>,
}

impl Listener {
    /// Blocks the stop signals (delivered through the listener from now on: the caller must
    /// be single-threaded so far) and joins the trace group.
    pub fn open() -> io::Result<Listener> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().map_err(io::Error::from)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.add_membership(libc::NFNLGRP_NFTRACE as u32)?;
        {
            use nix::sys::socket::{setsockopt, sockopt};
            // The forced size needs CAP_NET_ADMIN, which tracing needs anyway; best effort.
            if setsockopt(&sock, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
                let _ = setsockopt(&sock, sockopt::RcvBuf, &RECV_BUFFER);
            }
        }
        Ok(Listener {
            sock,
            signals,
            buf: Vec::with_capacity(DATAGRAM),
        })
    }

    /// Waits up to `timeout` (`None`: without end) for trace messages or a stop signal.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Wake> {
        if let Some(signal) = self.pending_signal()? {
            return Ok(Wake::Signal(signal));
        }
        if let Some(wake) = self.try_recv()? {
            return Ok(wake);
        }
        let timeout = match timeout {
            // Rounded up, so a wait never ends just before its deadline.
            Some(t) => {
                PollTimeout::try_from(t.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Wake::Timeout),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(signal) = self.pending_signal()? {
            return Ok(Wake::Signal(signal));
        }
        Ok(self.try_recv()?.unwrap_or(Wake::Timeout))
    }

    fn pending_signal(&mut self) -> io::Result<Option<Signal>> {
        Ok(self
            .signals
            .read_signal()
            .map_err(io::Error::from)?
            .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok()))
    }

    /// One queued datagram, if any.
    fn try_recv(&mut self) -> io::Result<Option<Wake>> {
        self.buf.clear();
        match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
            Ok(_) => Ok(Some(Wake::Messages(
                messages(&self.buf)
                    .map(|m| m.into_inner().to_vec())
                    .collect(),
            ))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Some(Wake::Overrun)),
            Err(e) => Err(e),
        }
    }
}
