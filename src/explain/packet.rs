//! The packet as the walk sees and changes it, and what evaluating one rule does to it: the
//! vocabulary shared by the walk ([`super::simulate`]) and the two rule evaluators
//! ([`super::iptables`], [`super::nftables`]), which import only this.

use super::flow::{Flow, State};
pub use crate::plan::Hook;
use crate::plan::{Family, Protocol};
use std::fmt;
use std::net::IpAddr;

/// What a matching rule does to the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Next rule (a mark, a zone, a counter, or no target).
    Continue,
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Continue => Ok(()),
            Action::Accept => f.write_str("accept"),
            Action::Drop => f.write_str("drop"),
            Action::Return => f.write_str("return"),
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// Conntrack state bits as nftables numbers them (`ct state`).
pub(crate) mod ct {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
}

/// The packet as the walk changes it.
#[derive(Clone, Debug)]
pub(crate) struct Packet {
    pub family: Family,
    pub proto: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ephemeral: 0, which no port rule names.
    pub sport: u16,
    pub dport: u16,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// Socket owner (uid, gid): only locally generated packets in OUTPUT have one.
    pub owner: Option<(u32, u32)>,
    pub mark: u32,
    pub ctmark: u32,
    pub ctstate: u32,
    pub zone: u16,
    pub hook: Hook,
    /// Port a REDIRECT sent the connection to.
    pub redirect: Option<u16>,
    /// Port a TPROXY delivered the packet to.
    pub tproxy: Option<u16>,
}

impl Packet {
    pub(crate) fn new(flow: &Flow) -> Packet {
        Packet {
            family: if flow.dst.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            },
            proto: flow.proto,
            src: flow.source(),
            dst: flow.dst.ip(),
            sport: 0,
            dport: flow.dst.port(),
            iif: None,
            oif: None,
            owner: None,
            mark: flow.mark,
            ctmark: 0,
            ctstate: match flow.state {
                State::New => ct::NEW,
                State::Established => ct::ESTABLISHED,
            },
            zone: 0,
            hook: Hook::Output,
            redirect: None,
            tproxy: None,
        }
    }

    /// REDIRECT: to the local port; locally generated packets go to the loopback address.
    pub(crate) fn redirect_to(&mut self, port: u16) {
        self.redirect = Some(port);
        self.dport = port;
        if self.hook == Hook::Output {
            self.dst = match self.family {
                Family::V4 => IpAddr::from([127, 0, 0, 1]),
                Family::V6 => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            };
            self.oif = Some("lo".into());
        }
    }
}

/// What evaluating one rule did.
#[derive(Debug)]
pub(crate) struct RuleResult {
    pub matched: bool,
    pub action: Action,
    pub effects: Vec<String>,
}
