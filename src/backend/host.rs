//! Names both backends resolve or spell the same way: owner groups from this system's databases
//! (read by [`crate::config::users`], re-exported here), transport protocols by their
//! /etc/protocols names (iptables' `-p tcp`, nft's `meta l4proto tcp`), and host names from
//! /etc/hosts.
//!
//! The release binary is linked statically (glibc), and a static glibc reaches the host database
//! through NSS, which may find no modules on a node. So /etc/hosts is read here first, in Rust;
//! only a name it does not hold goes to the C library (DNS names).

pub use crate::config::users::gid_of;
use crate::plan::Protocol;
use std::net::IpAddr;
use std::path::Path;

/// The addresses of `host` in a hosts file's text, in the file's order.
pub fn hosts_lookup(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?;
            let mut words = line.split_whitespace();
            let addr: IpAddr = words.next()?.parse().ok()?;
            words
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some(addr)
        })
        .collect()
}

/// The addresses of `host` in `hosts` (the root's /etc/hosts).
pub fn hosts_file_lookup(hosts: &Path, host: &str) -> Vec<IpAddr> {
    std::fs::read_to_string(hosts)
        .map(|text| hosts_lookup(&text, host))
        .unwrap_or_default()
}

/// The protocol's name as both rule languages write it.
pub fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_name_addresses() {
        let hosts = "127.0.0.1 localhost\n# 192.0.2.9 api\n192.0.2.1 kube-api kube-api.local # x\n\
                     ::1 localhost ip6-localhost\ngarbage line\n";
        assert_eq!(
            hosts_lookup(hosts, "localhost"),
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(hosts, "KUBE-API.local"),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(hosts, "api").is_empty());
    }
}
