//! Addresses as glibc's `inet_ntop` spells them, which `iptables-save` and `nft` both print.

use std::net::{IpAddr, Ipv4Addr};

/// As Rust spells an address, except an IPv4-compatible IPv6 address (96 zero bits, then an
/// IPv4 address whose first 16 bits are not zero) keeps its dotted quad: `::127.0.0.53` where
/// Rust writes `::7f00:35`.
pub fn ntop(addr: IpAddr) -> String {
    match addr {
        IpAddr::V6(v6) if v6.segments()[..6] == [0; 6] && v6.segments()[6] != 0 => {
            format!("::{}", Ipv4Addr::from(v6.to_bits() as u32))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::ntop;

    #[test]
    fn ipv6_addresses_are_spelled_as_inet_ntop_does() {
        for (addr, saved) in [
            ("::7f00:35", "::127.0.0.53"),
            ("::7f00:0", "::127.0.0.0"),
            ("::1", "::1"),
            ("::", "::"),
            ("::35", "::35"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
            ("2001:db8::53", "2001:db8::53"),
            ("192.0.2.53", "192.0.2.53"),
        ] {
            assert_eq!(ntop(addr.parse().unwrap()), saved, "{addr}");
        }
    }
}
