//! The nftables trace message (`NFT_MSG_TRACE`, sent to the `NFNLGRP_NFTRACE` group for each
//! rule, return and policy a packet with `meta nftrace` set passes), typed.

use super::attr::{attrs, be_u32, be_u64, string};
use super::expr::Verdict;

const TRACE_TABLE: u16 = 1;
const TRACE_CHAIN: u16 = 2;
const TRACE_RULE_HANDLE: u16 = 3;
const TRACE_TYPE: u16 = 4;
const TRACE_VERDICT: u16 = 5;
const TRACE_ID: u16 = 6;
const TRACE_LL_HEADER: u16 = 7;
const TRACE_NETWORK_HEADER: u16 = 8;
const TRACE_TRANSPORT_HEADER: u16 = 9;
const TRACE_IIF: u16 = 10;
const TRACE_OIF: u16 = 12;
const TRACE_MARK: u16 = 14;
const TRACE_NFPROTO: u16 = 15;
const TRACE_POLICY: u16 = 16;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;

/// One trace message: every attribute optional, as the kernel sends only what applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The family of the table (the message header's).
    pub family: u8,
    pub id: Option<u32>,
    /// `NFT_TRACETYPE_*` (policy 1, return 2, rule 3).
    pub trace_type: Option<u32>,
    pub table: Option<String>,
    pub chain: Option<String>,
    pub rule_handle: Option<u64>,
    pub verdict: Option<Verdict>,
    pub policy: Option<u32>,
    /// The packet's protocol family (`NFPROTO_*`).
    pub nfproto: Option<u32>,
    pub mark: Option<u32>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub ll_header: Option<Vec<u8>>,
    pub network_header: Option<Vec<u8>>,
    pub transport_header: Option<Vec<u8>>,
}

impl Trace {
    /// From the attributes of a trace message of `family`.
    pub fn decode(family: u8, raw: &[u8]) -> Trace {
        let mut t = Trace {
            family,
            ..Trace::default()
        };
        for (kind, v) in attrs(raw) {
            match kind {
                TRACE_TABLE => t.table = Some(string(v)),
                TRACE_CHAIN => t.chain = Some(string(v)),
                TRACE_RULE_HANDLE => t.rule_handle = be_u64(v),
                TRACE_TYPE => t.trace_type = be_u32(v),
                TRACE_ID => t.id = be_u32(v),
                TRACE_LL_HEADER => t.ll_header = Some(v.to_vec()),
                TRACE_NETWORK_HEADER => t.network_header = Some(v.to_vec()),
                TRACE_TRANSPORT_HEADER => t.transport_header = Some(v.to_vec()),
                TRACE_IIF => t.iif = be_u32(v),
                TRACE_OIF => t.oif = be_u32(v),
                TRACE_MARK => t.mark = be_u32(v),
                TRACE_NFPROTO => t.nfproto = be_u32(v),
                TRACE_POLICY => t.policy = be_u32(v),
                TRACE_VERDICT => {
                    let mut code = None;
                    let mut chain = None;
                    for (k, v) in attrs(v) {
                        match k {
                            VERDICT_CODE => code = be_u32(v).map(|c| c as i32),
                            VERDICT_CHAIN => chain = Some(string(v)),
                            _ => {}
                        }
                    }
                    t.verdict = code.map(|c| Verdict::from_code(c, chain));
                }
                _ => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::super::attr::Writer;
    use super::super::msg::{Message, MsgType, Object};
    use super::*;
    use nix::libc;

    /// A trace message as the kernel sends one: header, then the attributes.
    fn message(attrs: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let kind = MsgType::Trace.netlink_type();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&[libc::NFPROTO_INET as u8, 0, 0, 0]);
        attrs(&mut Writer::new(&mut buf));
        let len = buf.len() as u32;
        buf[..4].copy_from_slice(&len.to_ne_bytes());
        buf
    }

    #[test]
    fn a_rule_trace_decodes_with_its_verdict_and_headers() {
        let bytes = message(|w| {
            w.str(TRACE_TABLE, "istio-proxy-nat");
            w.str(TRACE_CHAIN, "output");
            w.u64(TRACE_RULE_HANDLE, 8);
            w.u32(TRACE_TYPE, libc::NFT_TRACETYPE_RULE as u32);
            w.nest(TRACE_VERDICT, |w| {
                w.u32(VERDICT_CODE, libc::NFT_JUMP as u32);
                w.str(VERDICT_CHAIN, "istio-output");
            });
            w.u32(TRACE_ID, 0xabcd);
            w.bytes(TRACE_NETWORK_HEADER, &[0x45, 0, 0, 20]);
            w.u32(TRACE_MARK, 1337);
            w.u32(TRACE_NFPROTO, libc::NFPROTO_IPV4 as u32);
        });
        let (_, m) = Message::decode(&bytes).unwrap();
        let Object::Trace(t) = m.object else {
            panic!("{m:?}")
        };
        assert_eq!(t.family, libc::NFPROTO_INET as u8);
        assert_eq!(t.table.as_deref(), Some("istio-proxy-nat"));
        assert_eq!(t.rule_handle, Some(8));
        assert_eq!(t.verdict, Some(Verdict::Jump("istio-output".into())));
        assert_eq!(t.id, Some(0xabcd));
        assert_eq!(t.mark, Some(1337));
        assert_eq!(t.network_header.as_deref(), Some(&[0x45, 0, 0, 20][..]));
        assert_eq!(t.transport_header, None);
        // Cut anywhere: no panic.
        for len in 0..bytes.len() {
            let _ = Message::decode(&bytes[..len]);
        }
    }
}
