//! The data plane: `meshcap proxy`, a transparent L4 proxy for the captured connections.

use std::ffi::OsString;
use std::process::ExitCode;

/// Entry point of `meshcap proxy ARGS…` (`args` starts with "proxy").
pub fn main(args: Vec<OsString>) -> ExitCode {
    let _ = args;
    eprintln!("meshcap proxy: not available in this build yet");
    ExitCode::from(2)
}
