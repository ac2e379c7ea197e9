//! Netlink attributes (type, length, value): a writer that appends them to a message, with
//! nesting, and a reader over netlink-packet-core's attribute iterator. Numbers in nf_tables
//! attributes are big-endian; the 4-byte alignment of every attribute is the writer's.
//!
//! A writer of our own rather than netlink-packet-core's `Nla` trait: the trait wants one type
//! per attribute list with a length pass before the emit pass, where nf_tables messages are
//! written once, front to back, as libnftnl writes them (so the bytes can be compared).

use netlink_packet_core::{NlaBuffer, NlasIterator};

/// `NLA_F_NESTED`: set on every nested attribute, as libmnl does.
const NESTED: u16 = 1 << 15;
/// The flag bits of an attribute's type.
const TYPE_MASK: u16 = !((1 << 15) | (1 << 14));
const HEADER: usize = 4;

/// Appends attributes to a message buffer.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { buf }
    }

    /// Appends one attribute of `kind` holding `value`, padded to 4 bytes.
    pub fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = (HEADER + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    pub fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn u64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A string with its terminating NUL (libmnl's `strz`).
    pub fn str(&mut self, kind: u16, value: &str) {
        let len = (HEADER + value.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A nested attribute: `inner` writes its content.
    pub fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Writer<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NESTED).to_ne_bytes());
        inner(&mut Writer { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }
}

/// The attributes of `bytes` as (type without flags, value); a malformed attribute ends them.
pub fn attrs(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(bytes)
        .map_while(Result::ok)
        .map(|nla: NlaBuffer<&[u8]>| {
            let kind = nla.kind() & TYPE_MASK;
            let len = usize::from(nla.length()).saturating_sub(HEADER);
            let inner = nla.into_inner();
            (kind, inner.get(HEADER..HEADER + len).unwrap_or_default())
        })
}

/// A big-endian u32 value; `None` when the value has another length.
pub fn be_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

pub fn be_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// A NUL-terminated string value (without its NUL; invalid UTF-8 replaced).
pub fn string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip_and_garbage_ends_the_list() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.str(1, "abc");
        w.nest(2, |w| {
            w.u32(1, 7);
            w.u64(2, 9);
        });
        assert_eq!(buf.len() % 4, 0);
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(got[0], (1, b"abc\0".to_vec()));
        assert_eq!(got[1].0, 2);
        let inner: Vec<(u16, Vec<u8>)> = attrs(&got[1].1).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(be_u32(&inner[0].1), Some(7));
        assert_eq!(be_u64(&inner[1].1), Some(9));
        assert_eq!(string(&got[0].1), "abc");
        // A length beyond the buffer: no attribute, no panic.
        assert_eq!(attrs(&[200, 0, 1, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }
}
