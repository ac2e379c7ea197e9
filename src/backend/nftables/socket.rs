//! A blocking netlink socket for request and answer: send a request or a batch, receive
//! datagrams as messages, collect a dump, check the acknowledgements of a batch. Headers and
//! error messages are read with netlink-packet-core's buffers. It knows no protocol beyond
//! netlink's own control messages: the nftables backend uses it on the netfilter bus, and a
//! listener (the nftables trace group, say) can join a group and use [`NetlinkSocket::recv`].

use netlink_packet_core::{ErrorBuffer, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer};
use netlink_sys::{Socket, SocketAddr};
use nix::libc;
use std::collections::BTreeSet;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd;

/// Messages start at 4-byte boundaries (`NLMSG_ALIGNTO`).
const ALIGN: usize = 4;
/// `sizeof(struct nlmsghdr)`.
const HEADER_LEN: usize = 16;
/// Larger than any datagram the kernel sends at once (one part of a dump).
const RECV_BUFFER: usize = 256 * 1024;
/// How long to wait for acknowledgements that are not queued yet.
const ACK_WAIT_MS: u16 = 1000;

/// The messages of a datagram or a batch, in order, each exactly as long as its header says;
/// a truncated message ends the sequence.
pub fn messages(bytes: &[u8]) -> impl Iterator<Item = NetlinkBuffer<&[u8]>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = NetlinkBuffer::new_checked(rest).ok()?.length() as usize;
        let (msg, after) = rest.split_at(len);
        rest = after
            .get(len.next_multiple_of(ALIGN) - len..)
            .unwrap_or_default();
        Some(NetlinkBuffer::new(msg))
    })
}

/// An `NLMSG_ERROR` message: the sequence number of the request it answers, and the kernel's
/// (positive) errno, 0 for an acknowledgement.
fn error_message(msg: &NetlinkBuffer<&[u8]>) -> (u32, i32) {
    match ErrorBuffer::new_checked(msg.payload()) {
        Ok(error) => {
            let code = error.code().map_or(0, |c| -c.get());
            // The request's header follows the code (only the header: NETLINK_CAP_ACK).
            let request = error.payload();
            let seq = if request.len() >= HEADER_LEN {
                NetlinkBuffer::new(request).sequence_number()
            } else {
                msg.sequence_number()
            };
            (seq, code)
        }
        Err(_) => (msg.sequence_number(), libc::EPROTO),
    }
}

/// The acknowledgements of a batch: the refusal of the lowest sequence number, if any, and how
/// many messages went unanswered.
pub struct Acks {
    pub first_refusal: Option<(u32, i32)>,
    pub unanswered: usize,
}

/// A netlink socket bound to the kernel on one bus.
pub struct NetlinkSocket {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl NetlinkSocket {
    /// Opens a socket of `protocol` (e.g. `netlink_sys::protocols::NETLINK_NETFILTER`).
    pub fn open(protocol: isize) -> io::Result<NetlinkSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: only shortens error acknowledgements.
        let _ = sock.set_cap_ack(true);
        Ok(NetlinkSocket {
            sock,
            buf: Vec::with_capacity(RECV_BUFFER),
            seq: 0x4d43_0000,
        })
    }

    /// A sequence number for the next request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Sends `bytes` in one datagram, first growing the send buffer when it is too small for
    /// them: nfnetlink only runs a batch that arrives whole.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let need = bytes.len() + 64 * 1024;
        if let Ok(current) = getsockopt(&self.sock, sockopt::SndBuf)
            && current < need
        {
            let _ = setsockopt(&self.sock, sockopt::SndBufForce, &need);
        }
        self.sock.send(bytes, 0)?;
        Ok(())
    }

    /// Sends a request that fits any send buffer (a dump request, say).
    fn send_small(&self, bytes: &[u8]) -> io::Result<()> {
        self.sock.send(bytes, 0)?;
        Ok(())
    }

    /// Reads one datagram into the receive buffer; `flags` as for recv(2) (`MSG_DONTWAIT`:
    /// `WouldBlock` when none is queued).
    fn recv_datagram(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.buf.clear();
        self.sock.recv(&mut self.buf, flags)?;
        Ok(())
    }

    /// The messages of the next datagram.
    pub fn recv(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.recv_datagram(0)?;
        Ok(messages(&self.buf)
            .map(|m| m.into_inner().to_vec())
            .collect())
    }

    /// Sends a dump request (sequence number `seq`) and returns the answer's messages; the
    /// kernel's refusal as an errno.
    pub fn dump(&mut self, request: &[u8], seq: u32) -> io::Result<Vec<Vec<u8>>> {
        self.send_small(request)?;
        let mut out = Vec::new();
        loop {
            self.recv_datagram(0)?;
            for msg in messages(&self.buf) {
                if msg.sequence_number() != seq {
                    continue;
                }
                match msg.message_type() {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return match error_message(&msg).1 {
                            0 => Ok(out),
                            code => Err(io::Error::from_raw_os_error(code)),
                        };
                    }
                    _ => out.push(msg.into_inner().to_vec()),
                }
            }
        }
    }

    /// Reads the acknowledgements of the requests numbered `seqs`, sent before.
    pub fn acks(&mut self, seqs: Range<u32>) -> io::Result<Acks> {
        let mut pending: BTreeSet<u32> = seqs.collect();
        let mut first_refusal: Option<(u32, i32)> = None;
        while !pending.is_empty() {
            // The kernel processes a batch inside sendto, so every acknowledgement is queued
            // already: read without waiting, and wait (briefly) only when the queue is empty,
            // which guards against a kernel that acknowledges less.
            match self.recv_datagram(libc::MSG_DONTWAIT) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.wait_readable(ACK_WAIT_MS)? {
                        continue;
                    }
                    break;
                }
                other => other?,
            }
            for msg in messages(&self.buf) {
                if msg.message_type() != NLMSG_ERROR {
                    continue;
                }
                let (seq, code) = error_message(&msg);
                pending.remove(&seq);
                if code != 0 && first_refusal.is_none_or(|(s, _)| seq < s) {
                    first_refusal = Some((seq, code));
                }
            }
        }
        Ok(Acks {
            first_refusal,
            unanswered: pending.len(),
        })
    }

    /// Closes the socket without waiting for the kernel to free what a batch deleted.
    ///
    /// nf_tables frees deleted tables, chains and rules after an RCU grace period, in a work
    /// item; whoever releases an nf_tables netlink socket while such work is pending waits for
    /// it (the `NETLINK_URELEASE` handler flushes the work). That is milliseconds on an idle
    /// machine, more on a busy one, and a CNI DEL would spend them on the runtime's critical
    /// path. So a short-lived child (this binary's `--version`) inherits the socket: our copy
    /// closes at once, and the child's exit drops the last reference and does the waiting.
    /// Best effort: when the child cannot be started, the socket is closed here, as before.
    pub fn close_in_background(self) {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        // Inherited across exec (the process is single-threaded here: no other spawn sees it).
        if fcntl(&self.sock, FcntlArg::F_SETFD(FdFlag::empty())).is_err() {
            return;
        }
        // Not waited for: only short-lived processes (the CNI plugin's DEL, the installer's
        // cleanup) clean up, and init reaps the child once they have exited.
        #[allow(clippy::zombie_processes)]
        let _ = Command::new("/proc/self/exe")
            .arg0("meshcap")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Whether a datagram arrives within `timeout_ms`.
    fn wait_readable(&self, timeout_ms: u16) -> io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        Ok(poll(&mut fds, PollTimeout::from(timeout_ms))? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `kind` with sequence number `seq` and `payload`, padded to 4 bytes.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + payload.len()) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(ALIGN), 0);
        out
    }

    /// An `NLMSG_ERROR` answering request `acked` with `code`, carrying only that request's
    /// header (NETLINK_CAP_ACK).
    fn error(seq: u32, code: i32, acked: u32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&message(0x0a06, acked, &[0; 40])[..HEADER_LEN]);
        message(NLMSG_ERROR, seq, &payload)
    }

    #[test]
    fn a_datagram_splits_at_padded_boundaries_and_stops_at_a_truncated_message() {
        let mut datagram = message(0x0a01, 7, &[1, 2, 3]);
        datagram.extend(message(NLMSG_DONE, 8, &[0; 4]));
        // A third message cut short: its header says 24 bytes, 20 arrived.
        datagram.extend(&message(0x0a01, 9, &[0; 8])[..20]);
        let got: Vec<(u16, u32, usize)> = messages(&datagram)
            .map(|m| (m.message_type(), m.sequence_number(), m.into_inner().len()))
            .collect();
        assert_eq!(got, [(0x0a01, 7, 19), (NLMSG_DONE, 8, 20)]);
    }

    #[test]
    fn an_error_message_names_the_request_it_answers_and_its_errno() {
        let parse = |bytes: &[u8]| error_message(&messages(bytes).next().unwrap());
        assert_eq!(parse(&error(1, 0, 41)), (41, 0));
        assert_eq!(parse(&error(1, -libc::ENOENT, 42)), (42, libc::ENOENT));
        // Without the request's header: the error's own sequence number.
        let short = message(NLMSG_ERROR, 5, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse(&short), (5, libc::EPERM));
        // Too short for an error code.
        assert_eq!(parse(&message(NLMSG_ERROR, 6, &[])), (6, libc::EPROTO));
    }
}
