//! The few nftables expressions and set features that nftnl's safe API lacks, built on the raw
//! libnftnl API (nftnl-sys) behind small safe types: `redir`, `tproxy`, `ct … set` for keys
//! other than the mark (the conntrack zone), a payload load of any length into any register
//! (nft trims prefix matches to whole bytes), an inverted set lookup, a range compare,
//! `protocol . port` set keys, and the flags and elements of anonymous sets.
//!
//! Each type writes exactly the attributes `nft` writes for the same statement (checked with
//! `nft --debug=netlink`), so that a ruleset installed over netlink lists like one loaded with
//! `nft -f`.

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use std::ffi::{CStr, CString, c_void};
use std::ptr::NonNull;

/// `NF_NAT_RANGE_PROTO_SPECIFIED`: nft sets it when a redirect names a port.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// `NFT_RANGE_EQ`.
const NFT_RANGE_EQ: u32 = 0;

fn alloc(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // libnftnl returns NULL only when out of memory; abort as nftnl does.
    NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) })
        .unwrap_or_else(|| std::process::abort())
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

pub const REG_1: u32 = libc::NFT_REG_1 as u32;
/// The 32-bit register after the one register 1 starts with: where nft puts the second field
/// of a concatenation whose first field fits in 4 bytes.
pub const REG32_01: u32 = libc::NFT_REG32_01 as u32;

/// `redirect to :port`, the port taken from register 1.
pub struct Redirect;

impl Expression for Redirect {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"redir");
        set_u32(e, sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, REG_1);
        set_u32(e, sys::NFTNL_EXPR_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        e
    }
}

/// `tproxy [ip|ip6] to :port`, the port taken from register 1.
pub struct Tproxy {
    /// `NFPROTO_IPV4`, `NFPROTO_IPV6`, or `NFPROTO_UNSPEC` (either family).
    pub nfproto: u32,
}

impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"tproxy");
        set_u32(e, sys::NFTNL_EXPR_TPROXY_FAMILY, self.nfproto);
        set_u32(e, sys::NFTNL_EXPR_TPROXY_REG_PORT, REG_1);
        e
    }
}

/// `ct KEY set` from register 1 (nftnl's `Conntrack` only sets the mark).
pub struct CtSet {
    /// An `NFT_CT_*` key, e.g. `NFT_CT_ZONE`.
    pub key: u32,
}

impl Expression for CtSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"ct");
        set_u32(e, sys::NFTNL_EXPR_CT_SREG, REG_1);
        set_u32(e, sys::NFTNL_EXPR_CT_KEY, self.key);
        e
    }
}

/// Loads `len` bytes at `offset` of a header into register `dreg`.
pub struct PayloadLoad {
    /// `NFT_PAYLOAD_NETWORK_HEADER` or `NFT_PAYLOAD_TRANSPORT_HEADER`.
    pub base: u32,
    pub offset: u32,
    pub len: u32,
    /// [`REG_1`], or [`REG32_01`] for the second field of a concatenation.
    pub dreg: u32,
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

/// Register 1 is (or, inverted, is not) an element of a set of the same transaction.
pub struct Lookup {
    pub set_name: CString,
    pub set_id: u32,
    pub inverted: bool,
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
        set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID, self.set_id);
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

/// Register 1 lies in `[from, to]` (byte strings in network order).
pub struct Range {
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub negated: bool,
}

impl Expression for Range {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = alloc(c"range");
        set_u32(e, sys::NFTNL_EXPR_RANGE_SREG, REG_1);
        set_u32(
            e,
            sys::NFTNL_EXPR_RANGE_OP,
            if self.negated { 1 } else { NFT_RANGE_EQ },
        );
        set_data(e, sys::NFTNL_EXPR_RANGE_FROM_DATA, &self.from);
        set_data(e, sys::NFTNL_EXPR_RANGE_TO_DATA, &self.to);
        e
    }
}

/// nft's `inet_proto . inet_service`: a transport protocol and a port, each field padded to 4
/// bytes as registers hold them (`meta l4proto . tcp dport`).
pub struct ProtoPortKey;

impl ProtoPortKey {
    /// The element key for `proto . port`.
    pub fn key(proto: u8, port: u16) -> Vec<u8> {
        let p = port.to_be_bytes();
        vec![proto, 0, 0, 0, p[0], p[1], 0, 0]
    }
}

impl SetKey for ProtoPortKey {
    /// nft's concatenated type id, 6 bits per field: inet_proto (12), inet_service (13).
    const TYPE: u32 = (12 << 6) | 13;
    const LEN: u32 = 8;
    fn data(&self) -> Box<[u8]> {
        // Elements are added with `add_element`; the key itself carries no value.
        Box::new([])
    }
}

/// Completes an anonymous set as nft does: its flags and the element count (the kernel picks
/// the set backend from it).
pub fn finish_set<K>(set: &Set<'_, K>, elements: usize) {
    let raw = set.as_ptr().as_ptr();
    let flags = (libc::NFT_SET_ANONYMOUS | libc::NFT_SET_CONSTANT) as u32;
    unsafe {
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_DESC_SIZE as u16, elements as u32);
    }
}

/// Adds an element with key `key` to the set's in-memory list (sent with `Set::elems_iter`).
pub fn add_element<K>(set: &Set<'_, K>, key: &[u8]) {
    unsafe {
        let elem = NonNull::new(sys::nftnl_set_elem_alloc())
            .unwrap_or_else(|| std::process::abort())
            .as_ptr();
        sys::nftnl_set_elem_set(
            elem,
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr() as *const c_void,
            key.len() as u32,
        );
        // nft writes the (empty) flags of every element.
        sys::nftnl_set_elem_set_u32(elem, sys::NFTNL_SET_ELEM_FLAGS as u16, 0);
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), elem);
    }
}
