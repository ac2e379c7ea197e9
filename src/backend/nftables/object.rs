//! libnftnl objects owned by Rust, the one place that reads them through the raw API:
//! [`Object`] allocates a table, chain, rule or set (aborting when out of memory, as nftnl does),
//! parses a message into it, reads and writes its attributes, and frees it on drop; [`Expr`]
//! reads one expression of a parsed rule. [`write_request`] writes the request messages
//! nftnl's safe API lacks (dumps, the set elements of one set, a table flush).

use super::socket::Message;
use nftnl::nftnl_sys::{self as sys, libc};
use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A libnftnl object type and its functions.
pub trait Kind {
    /// # Safety
    /// Returns a new object or null; the caller frees it with [`Kind::free`].
    unsafe fn alloc() -> *mut Self;
    /// # Safety
    /// `p` came from [`Kind::alloc`] and is not used afterwards.
    unsafe fn free(p: *mut Self);
    /// # Safety
    /// `nlh` points to a whole message, `p` to a live object.
    unsafe fn parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> libc::c_int;
    /// # Safety
    /// `p` points to a live object (so do the other accessors below).
    unsafe fn get_str(p: *mut Self, attr: u16) -> *const libc::c_char;
    /// # Safety
    /// As [`Kind::get_str`].
    unsafe fn get_u32(p: *mut Self, attr: u16) -> u32;
    /// # Safety
    /// As [`Kind::get_str`].
    unsafe fn is_set(p: *mut Self, attr: u16) -> bool;
    /// # Safety
    /// As [`Kind::get_str`].
    unsafe fn set_u32(p: *mut Self, attr: u16, value: u32);
    /// # Safety
    /// As [`Kind::get_str`]; `value` is a NUL-terminated string (libnftnl copies it).
    unsafe fn set_str(p: *mut Self, attr: u16, value: *const libc::c_char);
}

macro_rules! kind {
    ($t:ident: $alloc:ident, $free:ident, $parse:ident, $get_str:ident, $get_u32:ident,
     $is_set:ident, $set_u32:ident, $set_str:ident) => {
        impl Kind for sys::$t {
            unsafe fn alloc() -> *mut Self {
                unsafe { sys::$alloc() }
            }
            unsafe fn free(p: *mut Self) {
                unsafe { sys::$free(p) }
            }
            unsafe fn parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> libc::c_int {
                unsafe { sys::$parse(nlh, p) }
            }
            unsafe fn get_str(p: *mut Self, attr: u16) -> *const libc::c_char {
                unsafe { sys::$get_str(p, attr) }
            }
            unsafe fn get_u32(p: *mut Self, attr: u16) -> u32 {
                unsafe { sys::$get_u32(p, attr) }
            }
            unsafe fn is_set(p: *mut Self, attr: u16) -> bool {
                unsafe { sys::$is_set(p, attr) }
            }
            unsafe fn set_u32(p: *mut Self, attr: u16, value: u32) {
                unsafe { sys::$set_u32(p, attr, value) }
            }
            unsafe fn set_str(p: *mut Self, attr: u16, value: *const libc::c_char) {
                unsafe {
                    sys::$set_str(p, attr, value);
                }
            }
        }
    };
}

kind!(nftnl_table: nftnl_table_alloc, nftnl_table_free, nftnl_table_nlmsg_parse,
    nftnl_table_get_str, nftnl_table_get_u32, nftnl_table_is_set, nftnl_table_set_u32,
    nftnl_table_set_str);
kind!(nftnl_chain: nftnl_chain_alloc, nftnl_chain_free, nftnl_chain_nlmsg_parse,
    nftnl_chain_get_str, nftnl_chain_get_u32, nftnl_chain_is_set, nftnl_chain_set_u32,
    nftnl_chain_set_str);
kind!(nftnl_rule: nftnl_rule_alloc, nftnl_rule_free, nftnl_rule_nlmsg_parse,
    nftnl_rule_get_str, nftnl_rule_get_u32, nftnl_rule_is_set, nftnl_rule_set_u32,
    nftnl_rule_set_str);
kind!(nftnl_set: nftnl_set_alloc, nftnl_set_free, nftnl_set_nlmsg_parse, nftnl_set_get_str,
    nftnl_set_get_u32, nftnl_set_is_set, nftnl_set_set_u32, nftnl_set_set_str);

pub type Table = Object<sys::nftnl_table>;
pub type Chain = Object<sys::nftnl_chain>;
pub type Rule = Object<sys::nftnl_rule>;
pub type Set = Object<sys::nftnl_set>;

/// One libnftnl object, freed on drop.
pub struct Object<K: Kind>(NonNull<K>);

impl<K: Kind> Object<K> {
    pub fn new() -> Self {
        // libnftnl returns NULL only when out of memory; abort as nftnl does.
        Object(NonNull::new(unsafe { K::alloc() }).unwrap_or_else(|| std::process::abort()))
    }

    /// The object a message (from a dump or a batch) describes; `None` when libnftnl cannot
    /// parse it.
    pub fn parse(msg: &Message) -> Option<Self> {
        let object = Self::new();
        (unsafe { K::parse(msg.as_nlmsghdr(), object.0.as_ptr()) } >= 0).then_some(object)
    }

    /// A string attribute; empty when unset.
    pub fn str(&self, attr: u32) -> String {
        text(unsafe { K::get_str(self.0.as_ptr(), attr as u16) })
    }

    pub fn u32(&self, attr: u32) -> u32 {
        unsafe { K::get_u32(self.0.as_ptr(), attr as u16) }
    }

    pub fn has(&self, attr: u32) -> bool {
        unsafe { K::is_set(self.0.as_ptr(), attr as u16) }
    }

    pub fn set_u32(&mut self, attr: u32, value: u32) {
        unsafe { K::set_u32(self.0.as_ptr(), attr as u16, value) }
    }

    pub fn set_str(&mut self, attr: u32, value: &CStr) {
        unsafe { K::set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) }
    }
}

impl<K: Kind> Drop for Object<K> {
    fn drop(&mut self) {
        unsafe { K::free(self.0.as_ptr()) }
    }
}

fn text(ptr: *const libc::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

impl Rule {
    /// The rule's handle (a 64-bit attribute); 0 when unset.
    pub fn handle(&self) -> u64 {
        unsafe { sys::nftnl_rule_get_u64(self.0.as_ptr(), sys::NFTNL_RULE_HANDLE as u16) }
    }

    /// The rule's expressions, in order.
    pub fn exprs(&self) -> Vec<Expr<'_>> {
        let mut out = Vec::new();
        unsafe {
            let iter = sys::nftnl_expr_iter_create(self.0.as_ptr());
            if iter.is_null() {
                return out;
            }
            while let Some(e) = NonNull::new(sys::nftnl_expr_iter_next(iter)) {
                out.push(Expr {
                    ptr: e,
                    _rule: PhantomData,
                });
            }
            sys::nftnl_expr_iter_destroy(iter);
        }
        out
    }
}

impl Set {
    /// The set named in a message of set elements, with those elements.
    pub fn parse_elements(msg: &Message) -> Option<Set> {
        let set = Set::new();
        (unsafe { sys::nftnl_set_elems_nlmsg_parse(msg.as_nlmsghdr(), set.0.as_ptr()) } >= 0)
            .then_some(set)
    }

    /// The elements parsed into the set: key and whether it ends an interval.
    pub fn elements(&self) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        unsafe {
            let it = sys::nftnl_set_elems_iter_create(self.0.as_ptr());
            if it.is_null() {
                return out;
            }
            loop {
                let el = sys::nftnl_set_elems_iter_next(it);
                if el.is_null() {
                    break;
                }
                let mut len = 0u32;
                let p = sys::nftnl_set_elem_get(el, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
                let key = bytes(p, len);
                let flags = sys::NFTNL_SET_ELEM_FLAGS as u16;
                let end = sys::nftnl_set_elem_is_set(el, flags)
                    && sys::nftnl_set_elem_get_u32(el, flags)
                        & libc::NFT_SET_ELEM_INTERVAL_END as u32
                        != 0;
                out.push((key, end));
            }
            sys::nftnl_set_elems_iter_destroy(it);
        }
        out
    }
}

/// # Safety
/// `p` is null or points to `len` readable bytes.
unsafe fn bytes(p: *const c_void, len: u32) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) }.to_vec()
}

/// One expression of a parsed [`Rule`], valid while the rule lives.
pub struct Expr<'a> {
    ptr: NonNull<sys::nftnl_expr>,
    _rule: PhantomData<&'a Rule>,
}

impl Expr<'_> {
    /// The expression's type (`meta`, `cmp`, `payload`, …).
    pub fn name(&self) -> String {
        self.str(sys::NFTNL_EXPR_NAME)
    }

    pub fn str(&self, attr: u32) -> String {
        text(unsafe { sys::nftnl_expr_get_str(self.ptr.as_ptr(), attr as u16) })
    }

    pub fn u32(&self, attr: u32) -> u32 {
        unsafe { sys::nftnl_expr_get_u32(self.ptr.as_ptr(), attr as u16) }
    }

    pub fn has(&self, attr: u32) -> bool {
        unsafe { sys::nftnl_expr_is_set(self.ptr.as_ptr(), attr as u16) }
    }

    /// A number attribute, if set.
    pub fn opt_u32(&self, attr: u32) -> Option<u32> {
        self.has(attr).then(|| self.u32(attr))
    }

    /// A data attribute's bytes; empty when unset.
    pub fn data(&self, attr: u32) -> Vec<u8> {
        let mut len = 0u32;
        unsafe {
            bytes(
                sys::nftnl_expr_get(self.ptr.as_ptr(), attr as u16, &mut len),
                len,
            )
        }
    }

    /// libnftnl's own text of the expression.
    pub fn libnftnl_text(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = unsafe {
            sys::nftnl_expr_snprintf(
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                self.ptr.as_ptr(),
                sys::NFTNL_OUTPUT_DEFAULT,
                0,
            )
        };
        buf.truncate(n.clamp(0, 4095) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// What a request carries after its nfnetlink header.
pub enum Payload<'a> {
    None,
    /// The rule's attributes (`NFT_MSG_DELRULE` naming only a table flushes it).
    Rule(&'a Rule),
    /// The set's name and table, and its elements (none: a dump of them).
    SetElements(&'a Set),
}

/// Writes one request of `msg_type` (an `NFT_MSG_*`) for the inet family into `buf`.
///
/// # Safety
/// `buf` is aligned for `nlmsghdr` and large enough for the message.
pub unsafe fn write_request(
    buf: *mut c_void,
    msg_type: u16,
    flags: u16,
    seq: u32,
    payload: Payload<'_>,
) -> *mut libc::nlmsghdr {
    unsafe {
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf as *mut libc::c_char,
            msg_type,
            libc::NFPROTO_INET as u16,
            flags,
            seq,
        );
        match payload {
            Payload::None => {}
            Payload::Rule(rule) => sys::nftnl_rule_nlmsg_build_payload(hdr, rule.0.as_ptr()),
            Payload::SetElements(set) => {
                sys::nftnl_set_elems_nlmsg_build_payload(hdr, set.0.as_ptr())
            }
        }
        hdr
    }
}

/// A request as in [`write_request`], as a message to send.
pub fn request(msg_type: u16, flags: u16, seq: u32, payload: Payload<'_>) -> Message {
    // Requests name at most a table and a set: far below this.
    let mut words = vec![0u32; 2048];
    let len = unsafe {
        let hdr = write_request(words.as_mut_ptr().cast(), msg_type, flags, seq, payload);
        (*hdr).nlmsg_len as usize
    };
    Message::from_words(words, len)
}
