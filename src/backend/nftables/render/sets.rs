//! An anonymous set's elements as nft lists them.

use super::fields::{Val, words};
use super::value::{Kind, big_endian, host_u32, prefix_len, value_text};
use crate::backend::nftables::codec::SetElem;

/// An anonymous set's elements as nft lists them: sorted, `{ a, b }`, each a concatenation
/// `tcp . 80` when the key is one; an interval set's elements as ranges or prefixes.
pub(super) fn set_text(fields: &[Val], elements: &[SetElem]) -> String {
    let kinds: Vec<(Kind, usize)> = fields
        .iter()
        .map(|f| match f {
            Val::Masked { of, .. } => (of.kind(), f.len()),
            f => (f.kind(), f.len()),
        })
        .collect();
    // The fields of a key, each padded to whole registers.
    let split = |key: &[u8]| -> Vec<Vec<u8>> {
        let mut at = 0;
        kinds
            .iter()
            .map(|(_, len)| {
                let part = key.get(at..at + len).unwrap_or_default().to_vec();
                at += words(*len) * 4;
                part
            })
            .collect()
    };
    // nft sorts by value: a single field numerically (host-order fields as numbers), a
    // concatenation as one host-order number of the whole key (its last byte first).
    let sort_key = |key: &[u8]| -> Vec<u128> {
        if kinds.len() > 1 {
            return key.iter().rev().map(|b| u128::from(*b)).collect();
        }
        split(key)
            .iter()
            .zip(&kinds)
            .map(|(part, (kind, _))| match kind {
                Kind::Mark | Kind::Decimal | Kind::CtState | Kind::CtStatus => {
                    u128::from(host_u32(part))
                }
                _ => big_endian(part),
            })
            .collect()
    };
    let text = |key: &[u8]| -> String {
        split(key)
            .iter()
            .zip(&kinds)
            .map(|(part, (kind, _))| value_text(*kind, part))
            .collect::<Vec<_>>()
            .join(" . ")
    };
    let mut sorted: Vec<&SetElem> = elements.iter().collect();
    sorted.sort_by_key(|e| (sort_key(&e.key), e.interval_end()));
    let items: Vec<String> = if sorted.iter().any(|e| e.interval_end()) && kinds.len() == 1 {
        intervals(&sorted, kinds[0].0)
    } else {
        sorted.iter().map(|e| text(&e.key)).collect()
    };
    format!("{{ {} }}", items.join(", "))
}

/// An interval set's elements (a start, then the end's successor flagged as an end) as nft
/// shows them: a prefix when the range is one, else `first-last`, or a single value.
pub(super) fn intervals(sorted: &[&SetElem], kind: Kind) -> Vec<String> {
    let mut out = Vec::new();
    let mut start: Option<&[u8]> = None;
    let last_of = |end: &[u8]| -> Vec<u8> {
        // end - 1, big-endian.
        let mut v = end.to_vec();
        for b in v.iter_mut().rev() {
            if *b == 0 {
                *b = 0xff;
            } else {
                *b -= 1;
                break;
            }
        }
        v
    };
    let range = |first: &[u8], last: &[u8]| -> String {
        if first == last {
            return value_text(kind, first);
        }
        let mask: Vec<u8> = first.iter().zip(last).map(|(a, b)| !(a ^ b)).collect();
        let aligned = first.iter().zip(&mask).all(|(a, m)| a & !m == 0)
            && last.iter().zip(&mask).all(|(b, m)| b | m == 0xff);
        match (kind, prefix_len(&mask)) {
            (Kind::Ipv4 | Kind::Ipv6, Some(n)) if aligned => {
                format!("{}/{n}", value_text(kind, first))
            }
            _ => format!("{}-{}", value_text(kind, first), value_text(kind, last)),
        }
    };
    for e in sorted {
        match (start, e.interval_end()) {
            (None, false) => start = Some(&e.key),
            (Some(s), true) => {
                out.push(range(s, &last_of(&e.key)));
                start = None;
            }
            (Some(s), false) => {
                // Open to the end of the key space.
                let max = vec![0xff; s.len()];
                out.push(range(s, &max));
                start = Some(&e.key);
            }
            (None, true) => {}
        }
    }
    if let Some(s) = start {
        out.push(range(s, &vec![0xff; s.len()]));
    }
    out
}
