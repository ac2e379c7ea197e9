//! Names both backends resolve or spell the same way: owner users and groups from this system's
//! databases, and transport protocols by their /etc/protocols names (iptables' `-p tcp`, nft's
//! `meta l4proto tcp`); and host names from /etc/hosts.
//!
//! The release binary is linked statically (glibc), and a static glibc reaches the user, group
//! and host databases through NSS, which may find no modules on a node (the binary runs from the
//! node's root, or from an image that holds nothing else). So the files are read here first, in
//! Rust; only a name they do not hold goes to the C library (LDAP users, DNS names). Numbers
//! never need a lookup.

use crate::plan::Protocol;
use std::net::IpAddr;
use std::path::Path;

/// The third field of the line of `name` in a colon-separated database (passwd, group).
fn id_in(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then_some(())?;
            fields.nth(1)?.trim().parse().ok()
        })
}

fn id_in_file(path: &str, name: &str) -> Option<u32> {
    id_in(&std::fs::read_to_string(path).ok()?, name)
}

/// The gid of the group `name` on this system, if it has one.
pub fn gid_of(name: &str) -> Option<u32> {
    id_in_file("/etc/group", name).or_else(|| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// The uid of the user `name` on this system, if it has one.
pub fn uid_of(name: &str) -> Option<u32> {
    id_in_file("/etc/passwd", name).or_else(|| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

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
    fn ids_come_from_the_files_third_field() {
        let group = "# comment\nroot:x:0:\nistio-proxy:x:1337:a,b\nbad:x:notanumber:\n";
        assert_eq!(id_in(group, "istio-proxy"), Some(1337));
        assert_eq!(id_in(group, "root"), Some(0));
        assert_eq!(id_in(group, "bad"), None);
        assert_eq!(id_in(group, "istio"), None);
        assert_eq!(id_in("", "root"), None);
    }

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
