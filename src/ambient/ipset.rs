//! The host's probe sets for the iptables backend: ipsets of type `hash:ip`
//! (`istio-inpod-probes-v4`, `-v6`, as Istio names them), spoken to over the ipset netlink
//! protocol (nfnetlink subsystem 6).
//!
//! Netlink rather than the `ipset` binary: the agent adds and removes one address per pod for
//! the node's whole life, and a node image (like the CNI plugin's) should not need another
//! userspace tool whose version has to match the kernel's protocol. The protocol is small: one
//! request per call, acknowledged. Sets are per network namespace, like the rules.
//!
//! Entries carry a comment (Istio puts the pod's UID there), so sets are created with comment
//! support.

use crate::backend::BackendError;
use crate::plan::Family;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::net::IpAddr;

const NFNL_SUBSYS_IPSET: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;

// Commands.
const CMD_CREATE: u16 = 2;
const CMD_DESTROY: u16 = 3;
const CMD_ADD: u16 = 9;
const CMD_DEL: u16 = 10;
const CMD_TEST: u16 = 11;

// Attributes: command level, then inside DATA, then inside IP.
const ATTR_PROTOCOL: u16 = 1;
const ATTR_SETNAME: u16 = 2;
const ATTR_TYPENAME: u16 = 3;
const ATTR_REVISION: u16 = 4;
const ATTR_FAMILY: u16 = 5;
const ATTR_DATA: u16 = 7;
const ATTR_IP: u16 = 1;
const ATTR_CADT_FLAGS: u16 = 8;
const ATTR_COMMENT: u16 = 26;
const ATTR_IPADDR_IPV4: u16 = 1;
const ATTR_IPADDR_IPV6: u16 = 2;

/// The protocol version spoken (the kernel accepts 6 and 7).
const PROTOCOL: u8 = 7;
/// hash:ip revision 2 is the first with comments; every kernel since 3.10 has it.
const HASH_IP_REVISION: u8 = 2;
const FLAG_WITH_COMMENT: u32 = 1 << 4;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// The kernel's ipset error numbers (beyond errno's range).
const ERR_BUSY: i32 = 4100;
const ERR_TYPE_MISMATCH: i32 = 4102;
const ERR_EXIST: i32 = 4103;
const ERR_REFERENCED: i32 = 4108;

/// One request: netlink header, nfgenmsg, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(command: u16) -> Request {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&((NFNL_SUBSYS_IPSET << 8) | command).to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        // nfgenmsg: family (ignored by ipset), version 0, resource id 0.
        buf.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]);
        let mut request = Request { buf };
        request.attr(ATTR_PROTOCOL, &[PROTOCOL]);
        request
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn string(&mut self, kind: u16, text: &str) {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    /// A nested attribute whose content `build` writes.
    fn nested(&mut self, kind: u16, build: impl FnOnce(&mut Request)) {
        let start = self.buf.len();
        self.attr(kind | NLA_F_NESTED, &[]);
        build(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn address(&mut self, addr: IpAddr) {
        self.nested(ATTR_IP, |r| match addr {
            IpAddr::V4(a) => r.attr(ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets()),
            IpAddr::V6(a) => r.attr(ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets()),
        });
    }

    /// Sends the request and waits for its acknowledgement: `Err(code)` with the kernel's
    /// (positive) error number on refusal.
    fn send(mut self) -> Result<(), Answer> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        let socket = (|| {
            let mut socket = Socket::new(NETLINK_NETFILTER)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            socket.send(&self.buf, 0)?;
            let (reply, _) = socket.recv_from_full()?;
            Ok::<_, std::io::Error>(reply)
        })();
        let reply = socket.map_err(Answer::Io)?;
        // The answer to a single acknowledged request is one NLMSG_ERROR (code 0: success).
        if reply.len() >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            return if code == 0 {
                Ok(())
            } else {
                Err(Answer::Kernel(-code))
            };
        }
        Err(Answer::Io(std::io::Error::other("unexpected answer")))
    }
}

/// Why a request failed.
enum Answer {
    Io(std::io::Error),
    Kernel(i32),
}

impl Answer {
    fn reason(&self) -> String {
        match self {
            Answer::Io(e) => e.to_string(),
            Answer::Kernel(ERR_BUSY) => "the set is in use".into(),
            Answer::Kernel(ERR_TYPE_MISMATCH) => "a set of another type has this name".into(),
            Answer::Kernel(ERR_EXIST) => "exists already (with other settings)".into(),
            Answer::Kernel(ERR_REFERENCED) => "the set is referenced by a rule".into(),
            Answer::Kernel(code) if *code < 4096 => {
                std::io::Error::from_raw_os_error(*code).to_string()
            }
            Answer::Kernel(code) => format!("ipset error {code}"),
        }
    }
}

fn failure(what: String, answer: Answer) -> BackendError {
    BackendError::Netlink {
        what,
        reason: answer.reason(),
    }
}

/// Creates the `hash:ip` set `name` of `family` (with comments); one that exists with the same
/// settings is kept, elements and all.
pub fn create(name: &str, family: Family) -> Result<(), BackendError> {
    let mut request = Request::new(CMD_CREATE);
    request.string(ATTR_SETNAME, name);
    request.string(ATTR_TYPENAME, "hash:ip");
    request.attr(ATTR_REVISION, &[HASH_IP_REVISION]);
    request.attr(
        ATTR_FAMILY,
        &[match family {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }],
    );
    request.nested(ATTR_DATA, |r| {
        r.attr(
            ATTR_CADT_FLAGS | NLA_F_NET_BYTEORDER,
            &FLAG_WITH_COMMENT.to_be_bytes(),
        )
    });
    request
        .send()
        .map_err(|a| failure(format!("ipset create {name} hash:ip comment"), a))
}

/// Destroys the set `name`; a missing set is fine.
pub fn destroy(name: &str) -> Result<(), BackendError> {
    let mut request = Request::new(CMD_DESTROY);
    request.string(ATTR_SETNAME, name);
    match request.send() {
        Err(Answer::Kernel(code)) if code == libc_enoent() => Ok(()),
        other => other.map_err(|a| failure(format!("ipset destroy {name}"), a)),
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// Adds `addr` to the set (with `comment`, e.g. the pod's UID); present already is fine.
pub fn add(name: &str, addr: IpAddr, comment: Option<&str>) -> Result<(), BackendError> {
    let mut request = Request::new(CMD_ADD);
    request.string(ATTR_SETNAME, name);
    request.nested(ATTR_DATA, |r| {
        r.address(addr);
        if let Some(text) = comment {
            r.string(ATTR_COMMENT, text);
        }
    });
    request
        .send()
        .map_err(|a| failure(format!("ipset add {name} {addr}"), a))
}

/// Removes `addr` from the set; absent is fine.
pub fn del(name: &str, addr: IpAddr) -> Result<(), BackendError> {
    let mut request = Request::new(CMD_DEL);
    request.string(ATTR_SETNAME, name);
    request.nested(ATTR_DATA, |r| r.address(addr));
    match request.send() {
        Err(Answer::Kernel(ERR_EXIST)) => Ok(()),
        other => other.map_err(|a| failure(format!("ipset del {name} {addr}"), a)),
    }
}

/// Whether the set exists.
pub fn exists(name: &str) -> Result<bool, BackendError> {
    // A TEST looks the set up before it reads the element: a missing set says ENOENT, a present
    // one answers about the element (or its family) instead.
    match test(name, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)) {
        Err(Answer::Kernel(code)) if code == libc_enoent() => Ok(false),
        Err(Answer::Io(e)) => Err(failure(format!("ipset list {name}"), Answer::Io(e))),
        _ => Ok(true),
    }
}

fn test(name: &str, addr: IpAddr) -> Result<(), Answer> {
    let mut request = Request::new(CMD_TEST);
    request.string(ATTR_SETNAME, name);
    request.nested(ATTR_DATA, |r| r.address(addr));
    request.send()
}

/// Whether the set holds `addr`.
pub fn contains(name: &str, addr: IpAddr) -> Result<bool, BackendError> {
    match test(name, addr) {
        Ok(()) => Ok(true),
        Err(Answer::Kernel(ERR_EXIST)) => Ok(false),
        Err(a) => Err(failure(format!("ipset test {name} {addr}"), a)),
    }
}
