//! ZDS, the protocol between Istio's node agent and ztunnel: the agent hands ztunnel each
//! enrolled pod's network namespace over a unix SOCK_SEQPACKET socket, and ztunnel opens its
//! listeners inside it.
//!
//! - [`messages`]: the protobuf messages;
//! - [`agent`]: the agent's side, a listener that answers ztunnel's hello with a snapshot and
//!   then sends `add`/`del`, waiting for each ack;
//! - [`ztunnel`]: ztunnel's side, as far as tests need it (a stand-in that connects, receives
//!   the namespaces and acknowledges).

pub mod agent;
pub mod messages;
pub mod ztunnel;

/// Where ztunnel looks for the agent (ztunnel's INPOD_UDS default).
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// The largest message either side sends (a request is a uid and three short names).
const MAX_MESSAGE: usize = 64 * 1024;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socket2::Socket;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// Sends one message as one packet, with `fd` as SCM_RIGHTS when given.
fn send_packet(socket: &Socket, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let control: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    // MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a SIGPIPE.
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::other("message sent in part"));
    }
    Ok(())
}

/// Receives one packet: its bytes and the descriptors it carried. A closed connection is
/// `UnexpectedEof`; no packet within the socket's read timeout is `WouldBlock`.
fn recv_packet(socket: &Socket) -> io::Result<(Vec<u8>, Vec<File>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut control = nix::cmsg_space!([RawFd; 4]);
    let (len, truncated, raw) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut raw: Vec<RawFd> = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                raw.extend(fds);
            }
        }
        (
            msg.bytes,
            msg.flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
            raw,
        )
    };
    let files = raw
        .into_iter()
        .map(adopt)
        .collect::<io::Result<Vec<File>>>()?;
    if truncated {
        return Err(io::Error::other("message or descriptors truncated"));
    }
    if len == 0 && files.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.truncate(len);
    Ok((buf, files))
}

/// Takes ownership of a descriptor the kernel installed with SCM_RIGHTS, without `unsafe`: the
/// file is reopened through /proc/self/fd (a namespace descriptor reopens as the same
/// namespace) and the received number closed.
fn adopt(fd: RawFd) -> io::Result<File> {
    let file = File::open(format!("/proc/self/fd/{fd}"));
    nix::unistd::close(fd)?;
    file
}

/// The device and inode of an open file: what identifies a namespace.
pub fn identity(file: &impl AsFd) -> io::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(file.as_fd())?;
    Ok((stat.st_dev, stat.st_ino))
}
