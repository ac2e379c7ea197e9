//! The nf_tables expressions of a rule, typed: what a rule message carries in its
//! `NFTA_RULE_EXPRESSIONS` list, one [`Expr`] per list element. [`Expr::encode`] writes an
//! expression's attributes in libnftnl's order (so a batch is byte-equal to one built with
//! libnftnl, see tests/nftables_codec.rs); [`Expr::decode`] reads one from a rule the kernel
//! dumps or a batch carries. Decoding is total: an expression of another type, or one with an
//! attribute or flag this model does not hold, decodes to [`Expr::Unknown`] with its raw
//! attributes (so it re-encodes unchanged and never compares equal to a typed one).
//!
//! Registers are the numbers nf_tables uses on the wire: [`REG_VERDICT`], the 16-byte
//! registers 1-4 and the 4-byte registers 8-23 ([`REG32_00`] + n), which share storage
//! (register 1 is 4-byte registers 8 to 11).

use super::attr::{Writer, attrs, be_u32, be_u64, string};
use nix::libc;

/// The verdict register.
pub const REG_VERDICT: u32 = 0;
/// The first 16-byte data register.
pub const REG_1: u32 = 1;
/// The first 4-byte data register (the same storage as the start of register 1).
pub const REG32_00: u32 = 8;
/// The 4-byte register after the first: where nft puts the second field of a concatenation
/// whose first field fits in 4 bytes.
pub const REG32_01: u32 = 9;

/// `NFT_LOOKUP_F_INV`.
const LOOKUP_F_INV: u32 = 1;

// Attribute numbers (linux/netfilter/nf_tables.h).
pub(super) const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
pub(super) const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const META_DREG: u16 = 1;
const META_KEY: u16 = 2;
const META_SREG: u16 = 3;
const CMP_SREG: u16 = 1;
const CMP_OP: u16 = 2;
const CMP_DATA: u16 = 3;
const PAYLOAD_DREG: u16 = 1;
const PAYLOAD_BASE: u16 = 2;
const PAYLOAD_OFFSET: u16 = 3;
const PAYLOAD_LEN: u16 = 4;
const BITWISE_SREG: u16 = 1;
const BITWISE_DREG: u16 = 2;
const BITWISE_LEN: u16 = 3;
const BITWISE_MASK: u16 = 4;
const BITWISE_XOR: u16 = 5;
const BITWISE_OP: u16 = 6;
const LOOKUP_SET: u16 = 1;
const LOOKUP_SREG: u16 = 2;
const LOOKUP_SET_ID: u16 = 4;
const LOOKUP_FLAGS: u16 = 5;
const IMMEDIATE_DREG: u16 = 1;
const IMMEDIATE_DATA: u16 = 2;
const CT_DREG: u16 = 1;
const CT_KEY: u16 = 2;
const CT_DIRECTION: u16 = 3;
const CT_SREG: u16 = 4;
const COUNTER_BYTES: u16 = 1;
const COUNTER_PACKETS: u16 = 2;
const COUNTER_PAD: u16 = 3;
const REDIR_REG_PROTO_MIN: u16 = 1;
const REDIR_REG_PROTO_MAX: u16 = 2;
const REDIR_FLAGS: u16 = 3;
const TPROXY_FAMILY: u16 = 1;
const TPROXY_REG_ADDR: u16 = 2;
const TPROXY_REG_PORT: u16 = 3;
const RANGE_SREG: u16 = 1;
const RANGE_OP: u16 = 2;
const RANGE_FROM: u16 = 3;
const RANGE_TO: u16 = 4;
const NAT_TYPE: u16 = 1;
const NAT_FAMILY: u16 = 2;
const NAT_REG_ADDR_MIN: u16 = 3;
const NAT_REG_ADDR_MAX: u16 = 4;
const NAT_REG_PROTO_MIN: u16 = 5;
const NAT_REG_PROTO_MAX: u16 = 6;
const NAT_FLAGS: u16 = 7;

/// A key enum with named wire numbers and [`Other`](MetaKey::Other) for the rest.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $value:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
            /// A number this model has no name for.
            Other(u32),
        }

        impl $name {
            pub fn from_wire(n: u32) -> $name {
                $(if n == $value as u32 { return $name::$variant; })*
                $name::Other(n)
            }

            pub fn to_wire(self) -> u32 {
                match self {
                    $($name::$variant => $value as u32,)*
                    $name::Other(n) => n,
                }
            }
        }
    };
}

wire_enum!(
    /// `enum nft_meta_keys`: the keys meshcap and its trace use, by name.
    MetaKey {
        Mark = libc::NFT_META_MARK,
        Iif = libc::NFT_META_IIF,
        Oif = libc::NFT_META_OIF,
        IifName = libc::NFT_META_IIFNAME,
        OifName = libc::NFT_META_OIFNAME,
        SkUid = libc::NFT_META_SKUID,
        SkGid = libc::NFT_META_SKGID,
        NfTrace = libc::NFT_META_NFTRACE,
        NfProto = libc::NFT_META_NFPROTO,
        L4Proto = libc::NFT_META_L4PROTO,
    }
);

wire_enum!(
    /// `enum nft_ct_keys`: the conntrack keys meshcap uses.
    CtKey {
        State = libc::NFT_CT_STATE,
        Direction = libc::NFT_CT_DIRECTION,
        Status = libc::NFT_CT_STATUS,
        Mark = libc::NFT_CT_MARK,
        Zone = libc::NFT_CT_ZONE,
    }
);

wire_enum!(
    /// `enum nft_cmp_ops` (a range's `enum nft_range_ops` uses the first two).
    CmpOp {
        Eq = libc::NFT_CMP_EQ,
        Neq = libc::NFT_CMP_NEQ,
        Lt = libc::NFT_CMP_LT,
        Lte = libc::NFT_CMP_LTE,
        Gt = libc::NFT_CMP_GT,
        Gte = libc::NFT_CMP_GTE,
    }
);

wire_enum!(
    /// `enum nft_nat_types`.
    NatType {
        Snat = libc::NFT_NAT_SNAT,
        Dnat = libc::NFT_NAT_DNAT,
    }
);

wire_enum!(
    /// `enum nft_payload_bases`.
    PayloadBase {
        LinkLayer = libc::NFT_PAYLOAD_LL_HEADER,
        Network = libc::NFT_PAYLOAD_NETWORK_HEADER,
        Transport = libc::NFT_PAYLOAD_TRANSPORT_HEADER,
    }
);

/// A verdict: netfilter's (accept, drop) or nf_tables' own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Break,
    Jump(String),
    Goto(String),
    Return,
    /// Another code (queue, stolen, …), with the chain the message named, if any.
    Other(i32, Option<String>),
}

impl Verdict {
    pub fn code(&self) -> i32 {
        match self {
            Verdict::Accept => libc::NF_ACCEPT,
            Verdict::Drop => libc::NF_DROP,
            Verdict::Continue => libc::NFT_CONTINUE,
            Verdict::Break => libc::NFT_BREAK,
            Verdict::Jump(_) => libc::NFT_JUMP,
            Verdict::Goto(_) => libc::NFT_GOTO,
            Verdict::Return => libc::NFT_RETURN,
            Verdict::Other(code, _) => *code,
        }
    }

    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            Verdict::Other(_, c) => c.as_deref(),
            _ => None,
        }
    }

    /// The verdict of a code and target chain (a jump or goto without a chain is `Other`).
    pub fn from_code(code: i32, chain: Option<String>) -> Verdict {
        match (code, chain) {
            (libc::NF_ACCEPT, None) => Verdict::Accept,
            (libc::NF_DROP, None) => Verdict::Drop,
            (libc::NFT_CONTINUE, None) => Verdict::Continue,
            (libc::NFT_BREAK, None) => Verdict::Break,
            (libc::NFT_RETURN, None) => Verdict::Return,
            (libc::NFT_JUMP, Some(c)) => Verdict::Jump(c),
            (libc::NFT_GOTO, Some(c)) => Verdict::Goto(c),
            (code, chain) => Verdict::Other(code, chain),
        }
    }

    fn encode(&self, w: &mut Writer<'_>) {
        w.nest(DATA_VERDICT, |w| {
            w.u32(VERDICT_CODE, self.code() as u32);
            if let Some(chain) = self.chain() {
                w.str(VERDICT_CHAIN, chain);
            }
        });
    }

    /// From the content of an `NFTA_DATA_VERDICT`.
    fn decode(value: &[u8]) -> Option<Verdict> {
        let mut code = None;
        let mut chain = None;
        for (kind, v) in attrs(value) {
            match kind {
                VERDICT_CODE => code = Some(be_u32(v)? as i32),
                VERDICT_CHAIN => chain = Some(string(v)),
                _ => return None,
            }
        }
        Some(Verdict::from_code(code?, chain))
    }
}

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `meta load KEY => dreg`.
    Meta { key: MetaKey, dreg: u32 },
    /// `meta set KEY <= sreg`.
    MetaSet { key: MetaKey, sreg: u32 },
    /// Compares `data` with register `sreg`; the rule stops unless it holds.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// Loads `len` bytes at `offset` of a header into `dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `dreg = (sreg & mask) ^ xor` over `len` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Register `sreg` is (or, `invert`, is not) an element of set `set` (in a batch also named
    /// by its transaction id `set_id`; the kernel's dump has no id).
    Lookup {
        sreg: u32,
        set: String,
        set_id: Option<u32>,
        invert: bool,
    },
    /// Loads `data` into `dreg`.
    Immediate { dreg: u32, data: Vec<u8> },
    /// An immediate into the verdict register.
    Verdict(Verdict),
    /// `ct load KEY => dreg` (`direction`: original 0, reply 1).
    Ct {
        key: CtKey,
        direction: Option<u8>,
        dreg: u32,
    },
    /// `ct set KEY <= sreg`.
    CtSet { key: CtKey, sreg: u32 },
    /// Counts packets and bytes (0 and 0 in a batch; the kernel's counts in a dump).
    Counter { packets: u64, bytes: u64 },
    /// Redirects to the local host, the port range in registers (`flags`:
    /// `NF_NAT_RANGE_*`). A dump names one register as min and max alike; it decodes with
    /// `reg_proto_max: None`, as a batch writes it.
    Redir {
        reg_proto_min: Option<u32>,
        reg_proto_max: Option<u32>,
        flags: Option<u32>,
    },
    /// Transparent proxy to the port in `reg_port` (`family`: an `NFPROTO_*`, 0 for either).
    Tproxy {
        family: u32,
        reg_addr: Option<u32>,
        reg_port: Option<u32>,
    },
    /// Register `sreg` lies (`op` Eq) or does not lie (Neq) in `[from, to]`.
    Range {
        sreg: u32,
        op: CmpOp,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Source or destination NAT of `family` (an `NFPROTO_*`) to the address (range) and port
    /// (range) in registers (`flags`: `NF_NAT_RANGE_*`). Like [`Expr::Redir`], a dump names one
    /// register as min and max alike; the max decodes as `None` then.
    Nat {
        kind: NatType,
        family: u32,
        reg_addr_min: Option<u32>,
        reg_addr_max: Option<u32>,
        reg_proto_min: Option<u32>,
        reg_proto_max: Option<u32>,
        flags: Option<u32>,
    },
    /// Any other expression, or one with attributes this model does not hold: its name and the
    /// raw attributes of its `NFTA_EXPR_DATA`.
    Unknown { name: String, data: Vec<u8> },
}

fn data_value(w: &mut Writer<'_>, kind: u16, value: &[u8]) {
    w.nest(kind, |w| w.bytes(DATA_VALUE, value));
}

/// The bytes of an `NFTA_DATA_VALUE` inside `value` (an `nft_data_attributes` nest).
fn decode_value(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = None;
    for (kind, v) in attrs(value) {
        match kind {
            DATA_VALUE => out = Some(v.to_vec()),
            _ => return None,
        }
    }
    out
}

impl Expr {
    /// The expression's type name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Ct { .. } | Expr::CtSet { .. } => "ct",
            Expr::Counter { .. } => "counter",
            Expr::Redir { .. } => "redir",
            Expr::Tproxy { .. } => "tproxy",
            Expr::Range { .. } => "range",
            Expr::Nat { .. } => "nat",
            Expr::Unknown { name, .. } => name,
        }
    }

    /// Writes the expression as one element of a rule's expression list.
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.nest(LIST_ELEM, |w| {
            w.str(EXPR_NAME, self.name());
            w.nest(EXPR_DATA, |w| self.encode_data(w));
        });
    }

    /// The attributes inside `NFTA_EXPR_DATA`, in libnftnl's order.
    fn encode_data(&self, w: &mut Writer<'_>) {
        match self {
            Expr::Meta { key, dreg } => {
                w.u32(META_KEY, key.to_wire());
                w.u32(META_DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                w.u32(META_KEY, key.to_wire());
                w.u32(META_SREG, *sreg);
            }
            Expr::Cmp { sreg, op, data } => {
                w.u32(CMP_SREG, *sreg);
                w.u32(CMP_OP, op.to_wire());
                data_value(w, CMP_DATA, data);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                w.u32(PAYLOAD_DREG, *dreg);
                w.u32(PAYLOAD_BASE, base.to_wire());
                w.u32(PAYLOAD_OFFSET, *offset);
                w.u32(PAYLOAD_LEN, *len);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                w.u32(BITWISE_SREG, *sreg);
                w.u32(BITWISE_DREG, *dreg);
                w.u32(BITWISE_LEN, *len);
                data_value(w, BITWISE_MASK, mask);
                data_value(w, BITWISE_XOR, xor);
            }
            Expr::Lookup {
                sreg,
                set,
                set_id,
                invert,
            } => {
                w.u32(LOOKUP_SREG, *sreg);
                w.str(LOOKUP_SET, set);
                if let Some(id) = set_id {
                    w.u32(LOOKUP_SET_ID, *id);
                }
                if *invert {
                    w.u32(LOOKUP_FLAGS, LOOKUP_F_INV);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.u32(IMMEDIATE_DREG, *dreg);
                data_value(w, IMMEDIATE_DATA, data);
            }
            Expr::Verdict(v) => {
                w.u32(IMMEDIATE_DREG, REG_VERDICT);
                w.nest(IMMEDIATE_DATA, |w| v.encode(w));
            }
            Expr::Ct {
                key,
                direction,
                dreg,
            } => {
                w.u32(CT_KEY, key.to_wire());
                w.u32(CT_DREG, *dreg);
                if let Some(d) = direction {
                    w.bytes(CT_DIRECTION, &[*d]);
                }
            }
            Expr::CtSet { key, sreg } => {
                w.u32(CT_KEY, key.to_wire());
                w.u32(CT_SREG, *sreg);
            }
            Expr::Counter { packets, bytes } => {
                if *bytes != 0 {
                    w.u64(COUNTER_BYTES, *bytes);
                }
                if *packets != 0 {
                    w.u64(COUNTER_PACKETS, *packets);
                }
            }
            Expr::Redir {
                reg_proto_min,
                reg_proto_max,
                flags,
            } => {
                if let Some(r) = reg_proto_min {
                    w.u32(REDIR_REG_PROTO_MIN, *r);
                }
                if let Some(r) = reg_proto_max {
                    w.u32(REDIR_REG_PROTO_MAX, *r);
                }
                if let Some(f) = flags {
                    w.u32(REDIR_FLAGS, *f);
                }
            }
            Expr::Tproxy {
                family,
                reg_addr,
                reg_port,
            } => {
                w.u32(TPROXY_FAMILY, *family);
                if let Some(r) = reg_addr {
                    w.u32(TPROXY_REG_ADDR, *r);
                }
                if let Some(r) = reg_port {
                    w.u32(TPROXY_REG_PORT, *r);
                }
            }
            Expr::Range { sreg, op, from, to } => {
                w.u32(RANGE_SREG, *sreg);
                w.u32(RANGE_OP, op.to_wire());
                data_value(w, RANGE_FROM, from);
                data_value(w, RANGE_TO, to);
            }
            Expr::Nat {
                kind,
                family,
                reg_addr_min,
                reg_addr_max,
                reg_proto_min,
                reg_proto_max,
                flags,
            } => {
                w.u32(NAT_TYPE, kind.to_wire());
                w.u32(NAT_FAMILY, *family);
                for (attr, reg) in [
                    (NAT_REG_ADDR_MIN, reg_addr_min),
                    (NAT_REG_ADDR_MAX, reg_addr_max),
                    (NAT_REG_PROTO_MIN, reg_proto_min),
                    (NAT_REG_PROTO_MAX, reg_proto_max),
                    (NAT_FLAGS, flags),
                ] {
                    if let Some(v) = reg {
                        w.u32(attr, *v);
                    }
                }
            }
            Expr::Unknown { data, .. } => {
                // Raw attributes, already padded.
                for (kind, value) in attrs(data) {
                    w.bytes(kind, value);
                }
            }
        }
    }

    /// Decodes one `NFTA_LIST_ELEM` of a rule's expression list (its content).
    pub fn decode(elem: &[u8]) -> Expr {
        let mut name = String::new();
        let mut data: &[u8] = &[];
        for (kind, value) in attrs(elem) {
            match kind {
                EXPR_NAME => name = string(value),
                EXPR_DATA => data = value,
                _ => {}
            }
        }
        Expr::decode_data(&name, data).unwrap_or_else(|| Expr::Unknown {
            name,
            data: data.to_vec(),
        })
    }

    /// The typed expression of `name` with attributes `data`; `None` when this model cannot
    /// hold it exactly.
    fn decode_data(name: &str, data: &[u8]) -> Option<Expr> {
        let mut a: [Option<&[u8]>; 8] = [None; 8];
        for (kind, value) in attrs(data) {
            *a.get_mut(usize::from(kind))? = Some(value);
        }
        let u32_of = |k: u16| a[usize::from(k)].map(be_u32);
        // Every attribute present is one of `known`.
        let only = |known: &[u16]| {
            a.iter()
                .enumerate()
                .all(|(k, v)| v.is_none() || known.contains(&(k as u16)))
        };
        let req = |k: u16| u32_of(k).flatten();
        let opt = |k: u16| -> Option<Option<u32>> {
            match a[usize::from(k)] {
                None => Some(None),
                Some(v) => be_u32(v).map(Some),
            }
        };
        let value = |k: u16| a[usize::from(k)].and_then(decode_value);
        Some(match name {
            "meta" if only(&[META_KEY, META_DREG]) => Expr::Meta {
                key: MetaKey::from_wire(req(META_KEY)?),
                dreg: req(META_DREG)?,
            },
            "meta" if only(&[META_KEY, META_SREG]) => Expr::MetaSet {
                key: MetaKey::from_wire(req(META_KEY)?),
                sreg: req(META_SREG)?,
            },
            "cmp" if only(&[CMP_SREG, CMP_OP, CMP_DATA]) => Expr::Cmp {
                sreg: req(CMP_SREG)?,
                op: CmpOp::from_wire(req(CMP_OP)?),
                data: value(CMP_DATA)?,
            },
            "payload" if only(&[PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN]) => {
                Expr::Payload {
                    base: PayloadBase::from_wire(req(PAYLOAD_BASE)?),
                    offset: req(PAYLOAD_OFFSET)?,
                    len: req(PAYLOAD_LEN)?,
                    dreg: req(PAYLOAD_DREG)?,
                }
            }
            "bitwise"
                if only(&[
                    BITWISE_SREG,
                    BITWISE_DREG,
                    BITWISE_LEN,
                    BITWISE_MASK,
                    BITWISE_XOR,
                    BITWISE_OP,
                ]) && opt(BITWISE_OP)?.unwrap_or(0) == 0 =>
            {
                // The kernel dumps the boolean operation (0) that a batch leaves implicit.
                Expr::Bitwise {
                    sreg: req(BITWISE_SREG)?,
                    dreg: req(BITWISE_DREG)?,
                    len: req(BITWISE_LEN)?,
                    mask: value(BITWISE_MASK)?,
                    xor: value(BITWISE_XOR)?,
                }
            }
            "lookup"
                if only(&[LOOKUP_SET, LOOKUP_SREG, LOOKUP_SET_ID, LOOKUP_FLAGS])
                    && opt(LOOKUP_FLAGS)?.unwrap_or(0) & !LOOKUP_F_INV == 0 =>
            {
                Expr::Lookup {
                    sreg: req(LOOKUP_SREG)?,
                    set: string(a[usize::from(LOOKUP_SET)]?),
                    set_id: opt(LOOKUP_SET_ID)?,
                    invert: opt(LOOKUP_FLAGS)?.unwrap_or(0) & LOOKUP_F_INV != 0,
                }
            }
            "immediate" if only(&[IMMEDIATE_DREG, IMMEDIATE_DATA]) => {
                let dreg = req(IMMEDIATE_DREG)?;
                let data = a[usize::from(IMMEDIATE_DATA)]?;
                if dreg == REG_VERDICT {
                    let mut verdict = None;
                    for (kind, v) in attrs(data) {
                        match kind {
                            DATA_VERDICT => verdict = Some(Verdict::decode(v)?),
                            _ => return None,
                        }
                    }
                    Expr::Verdict(verdict?)
                } else {
                    Expr::Immediate {
                        dreg,
                        data: decode_value(data)?,
                    }
                }
            }
            "ct" if only(&[CT_KEY, CT_DREG, CT_DIRECTION]) => Expr::Ct {
                key: CtKey::from_wire(req(CT_KEY)?),
                direction: match a[usize::from(CT_DIRECTION)] {
                    None => None,
                    Some([d]) => Some(*d),
                    Some(_) => return None,
                },
                dreg: req(CT_DREG)?,
            },
            "ct" if only(&[CT_KEY, CT_SREG]) => Expr::CtSet {
                key: CtKey::from_wire(req(CT_KEY)?),
                sreg: req(CT_SREG)?,
            },
            "counter" if only(&[COUNTER_BYTES, COUNTER_PACKETS, COUNTER_PAD]) => {
                let n = |k: u16| match a[usize::from(k)] {
                    None => Some(0),
                    Some(v) => be_u64(v),
                };
                Expr::Counter {
                    packets: n(COUNTER_PACKETS)?,
                    bytes: n(COUNTER_BYTES)?,
                }
            }
            "redir" if only(&[REDIR_REG_PROTO_MIN, REDIR_REG_PROTO_MAX, REDIR_FLAGS]) => {
                let min = opt(REDIR_REG_PROTO_MIN)?;
                let max = opt(REDIR_REG_PROTO_MAX)?.filter(|m| Some(*m) != min);
                Expr::Redir {
                    reg_proto_min: min,
                    reg_proto_max: max,
                    flags: opt(REDIR_FLAGS)?,
                }
            }
            "tproxy" if only(&[TPROXY_FAMILY, TPROXY_REG_ADDR, TPROXY_REG_PORT]) => Expr::Tproxy {
                family: req(TPROXY_FAMILY)?,
                reg_addr: opt(TPROXY_REG_ADDR)?,
                reg_port: opt(TPROXY_REG_PORT)?,
            },
            "range" if only(&[RANGE_SREG, RANGE_OP, RANGE_FROM, RANGE_TO]) => Expr::Range {
                sreg: req(RANGE_SREG)?,
                op: CmpOp::from_wire(req(RANGE_OP)?),
                from: value(RANGE_FROM)?,
                to: value(RANGE_TO)?,
            },
            "nat"
                if only(&[
                    NAT_TYPE,
                    NAT_FAMILY,
                    NAT_REG_ADDR_MIN,
                    NAT_REG_ADDR_MAX,
                    NAT_REG_PROTO_MIN,
                    NAT_REG_PROTO_MAX,
                    NAT_FLAGS,
                ]) =>
            {
                let addr_min = opt(NAT_REG_ADDR_MIN)?;
                let proto_min = opt(NAT_REG_PROTO_MIN)?;
                Expr::Nat {
                    kind: NatType::from_wire(req(NAT_TYPE)?),
                    family: req(NAT_FAMILY)?,
                    reg_addr_min: addr_min,
                    reg_addr_max: opt(NAT_REG_ADDR_MAX)?.filter(|m| Some(*m) != addr_min),
                    reg_proto_min: proto_min,
                    reg_proto_max: opt(NAT_REG_PROTO_MAX)?.filter(|m| Some(*m) != proto_min),
                    flags: opt(NAT_FLAGS)?,
                }
            }
            _ => return None,
        })
    }

    /// The expression with its counts zeroed (for comparing a dumped rule with a built one).
    pub fn without_counts(&self) -> Expr {
        match self {
            Expr::Counter { .. } => Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: &Expr) -> Expr {
        let mut buf = Vec::new();
        e.encode(&mut Writer::new(&mut buf));
        let (kind, elem) = attrs(&buf).next().unwrap();
        assert_eq!(kind, LIST_ELEM);
        Expr::decode(elem)
    }

    #[test]
    fn every_typed_expression_round_trips() {
        let all = [
            Expr::Meta {
                key: MetaKey::SkUid,
                dreg: REG_1,
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: REG_1,
            },
            Expr::Cmp {
                sreg: REG_1,
                op: CmpOp::Neq,
                data: vec![0x39, 5, 0, 0],
            },
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: REG32_01,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                len: 4,
                mask: vec![255, 255, 255, 0],
                xor: vec![0; 4],
            },
            Expr::Lookup {
                sreg: 1,
                set: "__set%d".into(),
                set_id: Some(3),
                invert: true,
            },
            Expr::Immediate {
                dreg: 1,
                data: vec![0x3a, 0x99],
            },
            Expr::Verdict(Verdict::Jump("istio-output".into())),
            Expr::Verdict(Verdict::Return),
            Expr::Ct {
                key: CtKey::State,
                direction: None,
                dreg: 1,
            },
            Expr::CtSet {
                key: CtKey::Zone,
                sreg: 1,
            },
            Expr::Counter {
                packets: 3,
                bytes: 180,
            },
            Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            Expr::Redir {
                reg_proto_min: Some(1),
                reg_proto_max: None,
                flags: Some(2),
            },
            Expr::Tproxy {
                family: 0,
                reg_addr: None,
                reg_port: Some(1),
            },
            Expr::Range {
                sreg: 1,
                op: CmpOp::Eq,
                from: vec![10, 0, 0, 0],
                to: vec![10, 0, 2, 255],
            },
            Expr::Nat {
                kind: NatType::Snat,
                family: libc::NFPROTO_IPV4 as u32,
                reg_addr_min: Some(1),
                reg_addr_max: None,
                reg_proto_min: Some(2),
                reg_proto_max: Some(3),
                flags: Some(1),
            },
            Expr::Unknown {
                name: "target".into(),
                data: vec![12, 0, 1, 0, b'R', b'E', b'D', b'I', b'R', 0, 0, 0],
            },
        ];
        for e in &all {
            assert_eq!(&round_trip(e), e);
        }
    }

    #[test]
    fn what_the_model_cannot_hold_decodes_as_unknown() {
        // A lookup with a map's destination register, and a meta with no register.
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.str(EXPR_NAME, "lookup");
        w.nest(EXPR_DATA, |w| {
            w.str(LOOKUP_SET, "m");
            w.u32(LOOKUP_SREG, 1);
            w.u32(3, 2);
        });
        assert!(matches!(Expr::decode(&buf), Expr::Unknown { name, .. } if name == "lookup"));
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.str(EXPR_NAME, "meta");
        w.nest(EXPR_DATA, |w| w.u32(META_KEY, 3));
        assert!(matches!(Expr::decode(&buf), Expr::Unknown { .. }));
        // Garbage: no panic.
        for len in 0..buf.len() {
            let _ = Expr::decode(&buf[..len]);
        }
        assert!(matches!(Expr::decode(&[]), Expr::Unknown { name, .. } if name.is_empty()));
    }
}
