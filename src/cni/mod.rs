//! CNI mode: meshcap as a chained CNI plugin (`meshcap-cni`), another front door to the same
//! flow. The network configuration (and, in Kubernetes, the pod) becomes the same
//! [`crate::inputs::Inputs`] the command line gives, validated by the same [`crate::config`],
//! planned by the same [`crate::plan`] and applied by the same backends, inside `CNI_NETNS`.
//!
//! - [`spec`]: the specification's versions, error object and result conversion.
//! - [`env`]: the CNI environment variables.
//! - [`capture`]: the stanza's `"capture"` object on top of Istio's CNI defaults.
//! - [`plugin`]: the commands; [`ambient`]: ambient mode's enrolment through the node agent.
//! - [`k8s`]: the pod from the API server; [`install`]: the node installer.

pub mod ambient;
pub mod capture;
pub mod env;
pub mod install;
pub mod k8s;
pub mod plugin;
pub mod spec;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::ExitCode;

/// The file name a runtime executes the plugin by.
pub const PLUGIN_NAME: &str = "meshcap-cni";

/// Whether the process was started as the plugin (its file name is `meshcap-cni`).
pub fn invoked_as_plugin(argv0: Option<&OsString>) -> bool {
    argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .is_some_and(|name| name == PLUGIN_NAME)
}

/// The plugin: reads the environment and stdin, prints the result (or the error object) on
/// stdout. Logs go to stderr, which the runtime keeps.
pub fn main() -> ExitCode {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = spec::requested_version(&stdin);
    let outcome = match read {
        Err(e) => Err(spec::CniError::new(spec::code::DECODE, "cannot read stdin")
            .with_details(e.to_string())),
        Ok(_) => env::CniEnv::from_vars(&vars).and_then(|env| plugin::run(&env, &stdin)),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(result)) => {
            let _ = writeln!(out, "{result}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code, "{e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}
