//! nf_tables over netlink in safe Rust: the typed model of the messages meshcap sends and reads,
//! with an encoder and a decoder for each. This is the interface between the backend (which
//! builds messages from a plan, sends them and reads the kernel's dumps) and everything that
//! shows or evaluates rules (read-back, diff, explain, trace).
//!
//! - [`attr`]: netlink attributes (type, length, value), nested;
//! - [`expr`]: the expressions of a rule ([`Expr`]: meta, cmp, payload, bitwise, lookup,
//!   immediate and verdicts, ct, counter, redir, tproxy, range, nat, and `Unknown`);
//! - [`msg`]: tables, chains, sets, set elements, rules ([`Message`]), and the atomic
//!   [`Batch`];
//! - [`trace`]: the trace messages `meshcap trace` reads.
//!
//! Encoding writes attributes in libnftnl's order, so a batch is byte-equal to one libnftnl
//! builds (tests/nftables_codec.rs holds libnftnl as the oracle). Decoding is total: it never
//! panics, and what the model does not hold is kept raw ([`Expr::Unknown`],
//! [`Object::Unknown`]).

pub mod attr;
pub mod expr;
pub mod msg;
pub mod trace;

pub use expr::{CmpOp, CtKey, Expr, MetaKey, NatType, PayloadBase, Verdict};
pub use msg::{
    Batch, Chain, ChainHook, FinishedBatch, Header, Message, MsgType, Object, Rule, Set, SetElem,
    SetElems, Table,
};
pub use trace::Trace;
