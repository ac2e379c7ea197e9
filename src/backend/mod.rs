//! Backends spell and apply a [`Plan`](crate::plan::Plan); they never look at flags.
//!
//! Each backend implements [`Firewall`]: render (the `--dry-run` text), apply, read back what the
//! kernel holds, and clean. Read-back and [`Firewall::expected`] use the same spelling, so that
//! comparing them says whether the kernel holds the plan. [`session`] is the one door to them:
//! it picks the backend and works in the namespace.

pub mod address;
pub mod host;
pub mod iptables;
pub mod nftables;
pub mod routing;
pub mod session;

mod firewall;
mod lock;

pub use firewall::{Applied, BackendError, Firewall, Ruleset, RulesetDiff, TypedRules};
pub use lock::{NamespaceLock, namespace_lock};
