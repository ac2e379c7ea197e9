//! Names both backends resolve or spell the same way: owner groups from this system's group
//! database, and transport protocols by their /etc/protocols names (iptables' `-p tcp`, nft's
//! `meta l4proto tcp`).

use crate::plan::Protocol;

/// The gid of the group `name` on this system, if it has one.
pub fn gid_of(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The protocol's name as both rule languages write it.
pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}
