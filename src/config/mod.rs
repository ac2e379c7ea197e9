//! The validated, typed configuration.
//!
//! [`Config::from_inputs`] turns the raw [`crate::inputs::Inputs`] (flags and environment, or a
//! CNI network configuration and pod annotations) into typed values; every bad input fails here
//! with a [`ConfigError`] naming its flag, variable, key or annotation and the value. Nothing
//! downstream looks at strings again.

mod parse;
mod types;
pub mod users;

pub use parse::{ConfigError, HostFacts, SystemHost};
pub use types::{
    BackendKind, CaptureConfig, Config, DnsCapture, DnsServerV6, GroupRef, InboundPorts,
    InterceptMode, IptablesVariant, OutboundCidrs, OwnerGroups, RunConfig,
};
