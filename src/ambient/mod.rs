//! Ambient mode: the rules Istio's node agent (istio-cni) installs inside an enrolled pod's
//! network namespace so that ztunnel, the node's L4 proxy, sees the pod's TCP traffic, and the
//! node-side rule that lets the kubelet's health probes through.
//!
//! The flow is meshcap's usual one, kept apart from the sidecar modules because ambient's rules
//! have their own shape (masked marks, connmarks, SNAT, sets):
//! - [`config`]: the agent's settings and a pod's annotations, validated;
//! - [`plan`]: which rules exist, in Istio's order (pure);
//! - [`iptables`] and [`nftables`]: how each backend spells them (restore text, `nft -f` script),
//!   and the iptables install;
//! - [`routing`] and [`ipset`]: the fwmark rule and `local` routes of table 100, the host's
//!   probe set;
//! - [`apply`]: all of a plan installed, checked or removed in the current namespace;
//! - [`cli`]: `meshcap ambient pod|host|agent|enroll|unenroll`.
//!
//! The node agent: [`enrolment`] decides which pods are enrolled, [`node`] enrols them (rules,
//! probe set, ztunnel) and remembers them across restarts, [`zds`] speaks to ztunnel,
//! [`control`] is the socket the CNI plugin asks through, [`daemon`] runs it all.

pub mod apply;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enrolment;
pub mod flags;
pub mod ipset;
pub mod iptables;
pub mod nftables;
pub mod node;
pub mod plan;
pub mod readback;
pub mod routing;
pub mod socket_file;
pub mod zds;

/// The mark ztunnel puts on its own sockets' packets (under [`MARK_MASK`]): never captured.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// The bits of the packet and connection mark that ambient's rules own.
pub const MARK_MASK: u32 = 0xfff;
/// The connection mark of ztunnel's connections, restored onto their packets so that policy
/// routing ([`ROUTE_TABLE`]) delivers their replies locally.
pub const CONN_MARK: u32 = 0x111;
/// The routing table marked packets look up: one `local` default route via lo.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the fwmark rule (`ip rule ... pref 32764`), before the main table's 32766.
pub const RULE_PRIORITY: u32 = 32764;
/// ztunnel's outbound listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's inbound plaintext listener.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's inbound HBONE listener: reached directly, never redirected.
pub const INBOUND_HBONE_PORT: u16 = 15008;
/// ztunnel's DNS proxy.
pub const DNS_PORT: u16 = 15053;
/// The conntrack zone of ztunnel's DNS exchanges with upstream servers.
pub const DNS_CT_ZONE: u16 = 1;
/// The host probe sets: the addresses of enrolled pods whose probes are SNATed
/// (`istio-inpod-probes-v4` and `-v6`, Istio's names for the ipset and the nft sets).
pub const PROBE_SET_PREFIX: &str = "istio-inpod-probes";
