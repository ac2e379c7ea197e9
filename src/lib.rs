//! meshcap: installs the netfilter rules that send a pod's TCP traffic through its sidecar proxy.
//!
//! The flow runs one way: [`cli`] (raw flags and environment) → [`config`] (validated, typed) →
//! [`plan`] (which rules exist, backend-neutral, pure) → a [`backend`] (how they are spelled and
//! applied).

pub mod ambient;
pub mod backend;
pub mod cli;
pub mod cni;
pub mod config;
pub mod duration;
pub mod explain;
pub mod inputs;
pub mod logging;
pub mod plan;
pub mod proxy;
pub mod trace;
pub mod validation;
