//! The oracle: the same batch built with libnftnl (the `nftnl` crate and its raw API), the way
//! meshcap built it before it spoke nf_tables itself. Only tests use it; the release build has
//! no C library.

use meshcap::backend::nftables::batch::Existing;
use meshcap::backend::nftables::ir::{
    AddrField, AddrValue, Dir, Gid, Item, PortField, PortValue, RuleSpec, Spec, Verdict,
};
use meshcap::backend::nftables::names::{ChainType, Hook, TABLES, table_name};
use meshcap::plan::{Family, Protocol};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Expression, Immediate, Meta, Payload, Register,
    TcpHeaderField, TransportHeaderField, UdpHeaderField,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, MsgType, NlMsg, ProtoFamily, Rule};
use std::ffi::{CStr, CString, c_void};
use std::ptr::NonNull;

fn alloc(name: &CStr) -> NonNull<sys::nftnl_expr> {
    NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }).expect("memory")
}

fn set_u32(expr: NonNull<sys::nftnl_expr>, attr: u32, value: u32) {
    unsafe { sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value) }
}

fn set_data(expr: NonNull<sys::nftnl_expr>, attr: u32, data: &[u8]) {
    unsafe {
        sys::nftnl_expr_set(
            expr.as_ptr(),
            attr as u16,
            data.as_ptr() as *const c_void,
            data.len() as u32,
        );
    }
}

const REG_1: u32 = libc::NFT_REG_1 as u32;
const REG32_01: u32 = libc::NFT_REG32_01 as u32;

struct Redirect;
impl Expression for Redirect {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"redir");
        set_u32(e, sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, REG_1);
        set_u32(e, sys::NFTNL_EXPR_REDIR_FLAGS, 2);
        e
    }
}

struct Tproxy(u32);
impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"tproxy");
        set_u32(e, sys::NFTNL_EXPR_TPROXY_FAMILY, self.0);
        set_u32(e, sys::NFTNL_EXPR_TPROXY_REG_PORT, REG_1);
        e
    }
}

/// `nat snat|dnat FAMILY addr_min reg 1`, with the flags given.
struct Nat {
    family: u32,
    flags: u32,
}
impl Expression for Nat {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"nat");
        set_u32(e, sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_SNAT as u32);
        set_u32(e, sys::NFTNL_EXPR_NAT_FAMILY, self.family);
        set_u32(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, REG_1);
        set_u32(e, sys::NFTNL_EXPR_NAT_FLAGS, self.flags);
        e
    }
}

struct CtSet(u32);
impl Expression for CtSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"ct");
        set_u32(e, sys::NFTNL_EXPR_CT_SREG, REG_1);
        set_u32(e, sys::NFTNL_EXPR_CT_KEY, self.0);
        e
    }
}

struct PayloadLoad {
    base: u32,
    offset: u32,
    len: u32,
    dreg: u32,
}
impl Expression for PayloadLoad {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"payload");
        set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE, self.base);
        set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET, self.offset);
        set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN, self.len);
        set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG, self.dreg);
        e
    }
}

struct Lookup {
    set_name: CString,
    /// None: a named set, looked up by name alone.
    set_id: Option<u32>,
    inverted: bool,
}
impl Expression for Lookup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"lookup");
        set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG, REG_1);
        unsafe {
            sys::nftnl_expr_set_str(
                e.as_ptr(),
                sys::NFTNL_EXPR_LOOKUP_SET as u16,
                self.set_name.as_ptr(),
            );
        }
        if let Some(id) = self.set_id {
            set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID, id);
        }
        if self.inverted {
            set_u32(
                e,
                sys::NFTNL_EXPR_LOOKUP_FLAGS,
                libc::NFT_LOOKUP_F_INV as u32,
            );
        }
        e
    }
}

struct Range {
    from: Vec<u8>,
    to: Vec<u8>,
    negated: bool,
}
impl Expression for Range {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"range");
        set_u32(e, sys::NFTNL_EXPR_RANGE_SREG, REG_1);
        set_u32(e, sys::NFTNL_EXPR_RANGE_OP, u32::from(self.negated));
        set_data(e, sys::NFTNL_EXPR_RANGE_FROM_DATA, &self.from);
        set_data(e, sys::NFTNL_EXPR_RANGE_TO_DATA, &self.to);
        e
    }
}

struct ProtoPortKey;
impl SetKey for ProtoPortKey {
    const TYPE: u32 = (12 << 6) | 13;
    const LEN: u32 = 8;
    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

fn finish_set<K>(set: &Set<'_, K>, elements: usize) {
    let raw = set.as_ptr().as_ptr();
    let flags = (libc::NFT_SET_ANONYMOUS | libc::NFT_SET_CONSTANT) as u32;
    unsafe {
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DESC_SIZE as u16, elements as u32);
    }
}

fn add_element<K>(set: &Set<'_, K>, key: &[u8]) {
    unsafe {
        let elem = sys::nftnl_set_elem_alloc();
        assert!(!elem.is_null());
        sys::nftnl_set_elem_set(
            elem,
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr() as *const c_void,
            key.len() as u32,
        );
        sys::nftnl_set_elem_set_u32(elem, sys::NFTNL_SET_ELEM_FLAGS as u16, 0);
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), elem);
    }
}

/// `flush table`: a rule deletion naming only the table.
struct FlushTable(CString);

unsafe impl NlMsg for FlushTable {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let rule = sys::nftnl_rule_alloc();
            sys::nftnl_rule_set_u32(
                rule,
                sys::NFTNL_RULE_FAMILY as u16,
                libc::NFPROTO_INET as u32,
            );
            sys::nftnl_rule_set_str(rule, sys::NFTNL_RULE_TABLE as u16, self.0.as_ptr());
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf as *mut libc::c_char,
                libc::NFT_MSG_DELRULE as u16,
                libc::NFPROTO_INET as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(hdr, rule);
            sys::nftnl_rule_free(rule);
        }
    }
}

fn addr_bytes(family: Family, v: u128) -> Vec<u8> {
    match family {
        Family::V4 => (v as u32).to_be_bytes().to_vec(),
        Family::V6 => v.to_be_bytes().to_vec(),
    }
}

fn netmask(family: Family, prefix: u8) -> Vec<u8> {
    let bits = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let host = bits - u32::from(prefix);
    let mask: u128 = if host >= 128 {
        0
    } else {
        !((1u128 << host) - 1)
    };
    let mask = if bits == 32 {
        mask & u32::MAX as u128
    } else {
        mask
    };
    addr_bytes(family, mask)
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn cmp_op(negated: bool) -> CmpOp {
    if negated { CmpOp::Neq } else { CmpOp::Eq }
}

fn add_item(rule: &mut Rule, item: &Item, lookups: &mut impl Iterator<Item = (CString, u32)>) {
    match item {
        Item::NfProto(f) => {
            rule.add_expr(&Meta::NfProto);
            let v = match f {
                Family::V4 => libc::NFPROTO_IPV4,
                Family::V6 => libc::NFPROTO_IPV6,
            };
            rule.add_expr(&Cmp::new(CmpOp::Eq, v as u8));
        }
        Item::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, proto_num(*p)));
        }
        Item::Iface {
            dir,
            name,
            prefix,
            negated,
        } => {
            rule.add_expr(&match dir {
                Dir::In => Meta::IifName,
                Dir::Out => Meta::OifName,
            });
            let mut data = name.as_bytes().to_vec();
            if !*prefix {
                data.resize(libc::IFNAMSIZ, 0);
            }
            rule.add_expr(&Cmp::new(cmp_op(*negated), data.as_slice()));
        }
        Item::Addr {
            family,
            field,
            negated,
            value,
        } => {
            let (full, offset) = match (family, field) {
                (Family::V4, AddrField::Saddr) => (4, 12),
                (Family::V4, AddrField::Daddr) => (4, 16),
                (Family::V6, AddrField::Saddr) => (16, 8),
                (Family::V6, AddrField::Daddr) => (16, 24),
            };
            let load = |len: u32| PayloadLoad {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset,
                len,
                dreg: REG_1,
            };
            let zero = vec![0u8; full as usize];
            match value {
                AddrValue::Prefix(net) => {
                    let bytes = match net.network() {
                        std::net::IpAddr::V4(a) => a.octets().to_vec(),
                        std::net::IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    let plen = net.prefix() as usize;
                    if plen > 0 && plen % 8 == 0 {
                        rule.add_expr(&load((plen / 8) as u32));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), &bytes[..plen / 8]));
                    } else {
                        let mask = netmask(*family, plen as u8);
                        rule.add_expr(&load(full));
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), bytes.as_slice()));
                    }
                }
                AddrValue::Range(iv) => {
                    rule.add_expr(&load(full));
                    rule.add_expr(&Range {
                        from: addr_bytes(*family, iv.start),
                        to: addr_bytes(*family, iv.end),
                        negated: *negated,
                    });
                }
                AddrValue::Networks { prefix, .. } => {
                    rule.add_expr(&load(full));
                    if (*prefix as usize) < full as usize * 8 {
                        let mask = netmask(*family, *prefix);
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                    }
                    let (set_name, set_id) = lookups.next().expect("set");
                    rule.add_expr(&Lookup {
                        set_name,
                        set_id: Some(set_id),
                        inverted: *negated,
                    });
                }
            }
        }
        Item::Port {
            proto,
            field,
            negated,
            value,
        } => {
            let header = match (proto, field) {
                (Protocol::Tcp, PortField::Dport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Dport)
                }
                (Protocol::Tcp, PortField::Sport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Sport)
                }
                (Protocol::Udp, PortField::Dport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Dport)
                }
                (Protocol::Udp, PortField::Sport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Sport)
                }
            };
            match value {
                PortValue::One(p) => {
                    rule.add_expr(&Payload::Transport(header));
                    rule.add_expr(&Cmp::new(cmp_op(*negated), &p.to_be_bytes()[..]));
                }
                PortValue::Set(_) => {
                    rule.add_expr(&Meta::L4Proto);
                    rule.add_expr(&PayloadLoad {
                        base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                        offset: match field {
                            PortField::Sport => 0,
                            PortField::Dport => 2,
                        },
                        len: 2,
                        dreg: REG32_01,
                    });
                    let (set_name, set_id) = lookups.next().expect("set");
                    rule.add_expr(&Lookup {
                        set_name,
                        set_id: Some(set_id),
                        inverted: *negated,
                    });
                }
            }
        }
        Item::SkUid { uid, negated } => {
            rule.add_expr(&Meta::SkUid);
            rule.add_expr(&Cmp::new(cmp_op(*negated), *uid));
        }
        Item::SkGid { gid, negated } => {
            rule.add_expr(&Meta::SkGid);
            let gid = match gid {
                Gid::Id(id) => *id,
                Gid::Name(_) => u32::MAX,
            };
            rule.add_expr(&Cmp::new(cmp_op(*negated), gid));
        }
        Item::Mark { value, negated } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Cmp::new(cmp_op(*negated), *value));
        }
        Item::CtMark(v) => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Cmp::new(CmpOp::Eq, *v));
        }
        Item::CtState(mask) => {
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Item::MarkMasked {
            value,
            mask,
            negated,
        } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(cmp_op(*negated), *value));
        }
        Item::CtMarkMasked { value, mask } => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Eq, *value));
        }
        Item::HasSocketOwner => {
            rule.add_expr(&Meta::SkUid);
            rule.add_expr(&Cmp::new(CmpOp::Gte, 0u32));
        }
        Item::AddrInSet { family, field, set } => {
            let (offset, len) = match (family, field) {
                (Family::V4, AddrField::Saddr) => (12, 4),
                (Family::V4, AddrField::Daddr) => (16, 4),
                (Family::V6, AddrField::Saddr) => (8, 16),
                (Family::V6, AddrField::Daddr) => (24, 16),
            };
            rule.add_expr(&PayloadLoad {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset,
                len,
                dreg: REG_1,
            });
            rule.add_expr(&Lookup {
                set_name: CString::new(set.as_str()).unwrap(),
                set_id: None,
                inverted: false,
            });
        }
        Item::SetCtMark { value, mask } => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Bitwise::new(!*mask, *value));
            rule.add_expr(&Conntrack::Mark { set: true });
        }
        Item::Snat(addr) => {
            let family = match addr {
                std::net::IpAddr::V4(a) => {
                    rule.add_expr(&Immediate::new(a.octets(), Register::Reg1));
                    libc::NFPROTO_IPV4
                }
                std::net::IpAddr::V6(a) => {
                    rule.add_expr(&Immediate::new(a.octets(), Register::Reg1));
                    libc::NFPROTO_IPV6
                }
            };
            // NF_NAT_RANGE_MAP_IPS
            rule.add_expr(&Nat {
                family: family as u32,
                flags: 1,
            });
        }
        Item::Counter => rule.add_expr(&Counter),
        Item::SetMark { value, mask } => {
            if *mask == u32::MAX {
                rule.add_expr(&Immediate::new(*value, Register::Reg1));
            } else {
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(!*mask, *value));
            }
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::SaveMark => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Conntrack::Mark { set: true });
        }
        Item::RestoreMark => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::CtZone(z) => {
            rule.add_expr(&Immediate::new(*z, Register::Reg1));
            rule.add_expr(&CtSet(libc::NFT_CT_ZONE as u32));
        }
        Item::Redirect(port) => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            rule.add_expr(&Redirect);
        }
        Item::Tproxy { family, port } => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            let nfproto = match family {
                Some(Family::V4) => libc::NFPROTO_IPV4,
                Some(Family::V6) => libc::NFPROTO_IPV6,
                None => libc::NFPROTO_UNSPEC,
            };
            rule.add_expr(&Tproxy(nfproto as u32));
        }
        Item::Verdict(v) => rule.add_expr(&match v {
            Verdict::Jump(c) => nftnl::expr::Verdict::Jump {
                chain: CString::new(*c).unwrap(),
            },
            Verdict::Return => nftnl::expr::Verdict::Return,
            Verdict::Accept => nftnl::expr::Verdict::Accept,
            Verdict::Drop => nftnl::expr::Verdict::Drop,
        }),
    }
}

struct Builder {
    batch: Batch,
    next_set_id: u32,
}

impl Builder {
    fn set<K: SetKey>(&mut self, table: &nftnl::Table, keys: &[Vec<u8>]) -> (CString, u32) {
        self.next_set_id += 1;
        let id = self.next_set_id;
        let set = Set::<K>::new(c"__set%d", id, table, ProtoFamily::Inet);
        finish_set(&set, keys.len());
        for key in keys {
            add_element(&set, key);
        }
        self.batch.add(&set, MsgType::Add);
        for msg in set.elems_iter() {
            self.batch.add(&msg, MsgType::Add);
        }
        (set.get_name().to_owned(), id)
    }

    fn rule(&mut self, table: &nftnl::Table, chain: &nftnl::Chain, spec: &RuleSpec) {
        let mut lookups = Vec::new();
        for item in &spec.items {
            match item {
                Item::Addr {
                    family,
                    value: AddrValue::Networks { starts, .. },
                    ..
                } => {
                    let keys: Vec<Vec<u8>> =
                        starts.iter().map(|s| addr_bytes(*family, *s)).collect();
                    lookups.push(match family {
                        Family::V4 => self.set::<std::net::Ipv4Addr>(table, &keys),
                        Family::V6 => self.set::<std::net::Ipv6Addr>(table, &keys),
                    });
                }
                Item::Port {
                    proto,
                    value: PortValue::Set(ports),
                    ..
                } => {
                    let keys: Vec<Vec<u8>> = ports
                        .iter()
                        .map(|p| {
                            let b = p.to_be_bytes();
                            vec![proto_num(*proto), 0, 0, 0, b[0], b[1], 0, 0]
                        })
                        .collect();
                    lookups.push(self.set::<ProtoPortKey>(table, &keys));
                }
                _ => {}
            }
        }
        let mut rule = Rule::new(chain);
        let mut lookups = lookups.into_iter();
        for item in &spec.items {
            add_item(&mut rule, item, &mut lookups);
        }
        self.batch.add(&rule, MsgType::Add);
    }
}

/// The batch's bytes as libnftnl builds it for `spec` given `existing`.
pub fn build_batch(spec: &Spec, existing: &Existing) -> Vec<u8> {
    let mut b = Builder {
        batch: Batch::new(),
        next_set_id: 0,
    };
    for name in TABLES.map(table_name) {
        let want = spec.tables.iter().find(|t| t.name == name);
        let exists = existing.tables.iter().any(|t| t == name);
        let cname = CString::new(name).unwrap();
        let table = nftnl::Table::new(&cname, ProtoFamily::Inet);
        let Some(want) = want else {
            if exists {
                b.batch.add(&table, MsgType::Del);
            }
            continue;
        };
        b.batch.add(&table, MsgType::Add);
        if exists {
            b.batch.add(&FlushTable(cname.clone()), MsgType::Del);
            let old: Vec<_> = existing.chains.iter().filter(|c| c.table == name).collect();
            // The test's existing chains never match the plan's: every one is re-created.
            for c in old {
                let n = CString::new(c.name.as_str()).unwrap();
                b.batch.add(&nftnl::Chain::new(&n, &table), MsgType::Del);
            }
        }
        let names: Vec<CString> = want
            .chains
            .iter()
            .map(|c| CString::new(c.name).unwrap())
            .collect();
        let chains: Vec<nftnl::Chain> = want
            .chains
            .iter()
            .zip(&names)
            .map(|(c, n)| {
                let mut chain = nftnl::Chain::new(n, &table);
                if let Some(base) = c.base {
                    chain.set_hook(
                        match base.hook {
                            Hook::Prerouting => nftnl::Hook::PreRouting,
                            Hook::Output => nftnl::Hook::Out,
                            Hook::Postrouting => nftnl::Hook::PostRouting,
                        },
                        base.priority,
                    );
                    chain.set_type(match base.kind {
                        ChainType::Filter => nftnl::ChainType::Filter,
                        ChainType::Route => nftnl::ChainType::Route,
                        ChainType::Nat => nftnl::ChainType::Nat,
                    });
                }
                chain
            })
            .collect();
        for chain in &chains {
            b.batch.add(chain, MsgType::Add);
        }
        for (c, chain) in want.chains.iter().zip(&chains) {
            for r in &c.rules {
                b.rule(&table, chain, r);
            }
        }
    }
    let finalized = b.batch.finalize();
    let mut out = Vec::new();
    for page in finalized.iter() {
        out.extend_from_slice(page);
    }
    out
}
