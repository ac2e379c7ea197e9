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
