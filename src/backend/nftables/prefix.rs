//! Address arithmetic for nft's address lists: networks as intervals, merging them as nft's
//! automerge does, splitting intervals into the fewest prefixes, and netmasks. Addresses are
//! `u128` values of one family (IPv4 in the low 32 bits).

use super::ir::{AddrValue, Interval};
use crate::plan::Family;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn family_of(net: &IpNetwork) -> Family {
    if net.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn u128_to_ip(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The largest address of a family.
fn family_max(family: Family) -> u128 {
    match family {
        Family::V4 => u32::MAX as u128,
        Family::V6 => u128::MAX,
    }
}

pub fn bits(family: Family) -> u32 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

fn interval_of(net: &IpNetwork) -> Interval {
    let family = family_of(net);
    let start = ip_to_u128(net.network());
    let host_bits = bits(family) - net.prefix() as u32;
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Interval {
        start,
        end: start | span,
    }
}

/// The prefix an interval is, if it is one.
pub fn as_prefix(family: Family, iv: Interval) -> Option<IpNetwork> {
    let size = iv.end.wrapping_sub(iv.start).wrapping_add(1);
    let host_bits = if size == 0 {
        // The whole IPv6 space.
        128
    } else if size.is_power_of_two() {
        size.trailing_zeros()
    } else {
        return None;
    };
    if host_bits > bits(family) || (host_bits < 128 && iv.start & ((1u128 << host_bits) - 1) != 0) {
        return None;
    }
    IpNetwork::new(
        u128_to_ip(family, iv.start),
        (bits(family) - host_bits) as u8,
    )
    .ok()
}

/// Sorts, deduplicates and merges overlapping or adjacent intervals (what nft's automerge does).
fn merge_intervals(mut ivs: Vec<Interval>) -> Vec<Interval> {
    ivs.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(ivs.len());
    for iv in ivs {
        if let Some(last) = out.last_mut()
            && (iv.start <= last.end || iv.start == last.end.wrapping_add(1))
        {
            last.end = last.end.max(iv.end);
            continue;
        }
        out.push(iv);
    }
    out
}

/// The values a list of networks matches, as alternatives (a packet matches at most one): one
/// prefix or range when the merged list is one interval, else one value per prefix length of
/// the list's intervals split into prefixes, widest first.
pub fn addr_values(family: Family, nets: &[IpNetwork]) -> Vec<AddrValue> {
    let merged = merge_intervals(nets.iter().map(interval_of).collect());
    if let [one] = merged.as_slice() {
        return vec![match as_prefix(family, *one) {
            Some(net) => AddrValue::Prefix(net),
            None => AddrValue::Range(*one),
        }];
    }
    let mut by_prefix: std::collections::BTreeMap<u8, Vec<u128>> = Default::default();
    for iv in merged {
        for (start, prefix) in split_into_prefixes(family, iv) {
            by_prefix.entry(prefix).or_default().push(start);
        }
    }
    by_prefix
        .into_iter()
        .map(|(prefix, starts)| match starts.as_slice() {
            [one] => AddrValue::Prefix(
                IpNetwork::new(u128_to_ip(family, *one), prefix).expect("prefix within family"),
            ),
            _ => AddrValue::Networks { prefix, starts },
        })
        .collect()
}

/// The fewest prefixes (first address, prefix length) that cover exactly `iv`, in order.
fn split_into_prefixes(family: Family, iv: Interval) -> Vec<(u128, u8)> {
    let width = bits(family);
    let mut out = Vec::new();
    let mut start = iv.start;
    loop {
        // The largest block aligned at `start` that does not pass `iv.end`.
        let mut host_bits = if start == 0 {
            width
        } else {
            start.trailing_zeros().min(width)
        };
        while host_bits > 0 && block_end(start, host_bits) > iv.end {
            host_bits -= 1;
        }
        out.push((start, (width - host_bits) as u8));
        let end = block_end(start, host_bits);
        if end >= iv.end {
            return out;
        }
        start = end + 1;
    }
}

/// The last address of the block of `2^host_bits` addresses starting at `start`.
fn block_end(start: u128, host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        start | ((1u128 << host_bits) - 1)
    }
}

/// The netmask of a prefix length, as a value of the family (IPv4 in the low 32 bits).
pub fn netmask(family: Family, prefix: u8) -> u128 {
    let host_bits = bits(family) - u32::from(prefix);
    !block_end(0, host_bits) & family_max(family)
}

/// The netmask of a prefix length, as an address (`255.255.255.0`).
pub fn prefix_mask(family: Family, prefix: u8) -> IpAddr {
    u128_to_ip(family, netmask(family, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn adjacent_and_overlapping_networks_merge_like_nft() {
        let nets = [
            v4("10.0.1.0/24"),
            v4("10.0.0.0/24"),
            v4("10.0.0.0/24"),
            v4("10.0.4.0/24"),
        ];
        // 10.0.0.0/23 (merged) and 10.0.4.0/24: two lengths, one prefix each.
        assert_eq!(
            addr_values(Family::V4, &nets),
            [
                AddrValue::Prefix(v4("10.0.0.0/23")),
                AddrValue::Prefix(v4("10.0.4.0/24"))
            ]
        );
        assert_eq!(
            addr_values(
                Family::V4,
                &[v4("10.0.0.0/24"), v4("10.0.1.0/24"), v4("10.0.2.0/24")]
            ),
            [AddrValue::Range(Interval {
                start: 0x0a00_0000,
                end: 0x0a00_02ff
            })]
        );
        assert_eq!(
            addr_values(Family::V4, &[v4("10.0.0.0/8"), v4("10.1.0.0/16")]),
            [AddrValue::Prefix(v4("10.0.0.0/8"))]
        );
    }

    #[test]
    fn networks_group_by_prefix_length_widest_first() {
        let nets = [
            v4("192.0.2.7/32"),
            v4("10.0.0.0/8"),
            v4("192.0.2.1/32"),
            v4("198.51.100.0/24"),
            v4("203.0.113.0/24"),
            // 192.0.2.8-192.0.2.10 merges with nothing: 192.0.2.8/31 + 192.0.2.10/32.
            v4("192.0.2.8/31"),
            v4("192.0.2.10/32"),
        ];
        let [a, b, c, d] = addr_values(Family::V4, &nets).try_into().unwrap();
        assert_eq!(a, AddrValue::Prefix(v4("10.0.0.0/8")));
        assert_eq!(
            b,
            AddrValue::Networks {
                prefix: 24,
                starts: vec![0xc633_6400, 0xcb00_7100]
            }
        );
        // 192.0.2.7/32 and 192.0.2.8/31 are adjacent: 192.0.2.7-192.0.2.10 splits into
        // .7/32, .8/31, .10/32.
        assert_eq!(c, AddrValue::Prefix(v4("192.0.2.8/31")), "{nets:?}");
        assert_eq!(
            d,
            AddrValue::Networks {
                prefix: 32,
                starts: vec![0xc000_0201, 0xc000_0207, 0xc000_020a]
            }
        );
    }

    #[test]
    fn intervals_split_into_the_fewest_prefixes() {
        let split =
            |start: u128, end: u128| split_into_prefixes(Family::V4, Interval { start, end });
        assert_eq!(split(0, u32::MAX as u128), [(0, 0)]);
        assert_eq!(split(1, 6), [(1, 32), (2, 31), (4, 31), (6, 32)]);
        assert_eq!(
            split(0x0a00_0000, 0x0a00_02ff),
            [(0x0a00_0000, 23), (0x0a00_0200, 24)]
        );
        assert_eq!(
            split_into_prefixes(
                Family::V6,
                Interval {
                    start: 0,
                    end: u128::MAX
                }
            ),
            [(0, 0)]
        );
        assert_eq!(prefix_mask(Family::V4, 20).to_string(), "255.255.240.0");
        assert_eq!(prefix_mask(Family::V6, 32).to_string(), "ffff:ffff::");
        assert_eq!(prefix_mask(Family::V4, 32).to_string(), "255.255.255.255");
    }

    #[test]
    fn whole_address_spaces_are_prefixes() {
        let all6: IpNetwork = "::/0".parse().unwrap();
        assert_eq!(
            addr_values(Family::V6, &[all6]),
            [AddrValue::Prefix("::/0".parse().unwrap())]
        );
        assert_eq!(
            addr_values(Family::V4, &[v4("0.0.0.0/0")]),
            [AddrValue::Prefix(v4("0.0.0.0/0"))]
        );
    }
}
