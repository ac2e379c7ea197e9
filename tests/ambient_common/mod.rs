//! What the ambient tests share: meshcap run with none of the agent's variables from the
//! test's own environment (they would change the rules).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The agent's environment variables `meshcap ambient` reads.
pub const AGENT_VARIABLES: [&str; 4] = [
    "HOST_PROBE_SNAT_IP",
    "HOST_PROBE_SNAT_IPV6",
    "AMBIENT_DNS_CAPTURE",
    "AMBIENT_IPV6",
];

/// `meshcap ARGS` (logging at info), whatever its exit status.
pub fn meshcap<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshcap"));
    command.args(args).env("MESHCAP_LOG", "info");
    for var in AGENT_VARIABLES {
        command.env_remove(var);
    }
    command.output().unwrap()
}
