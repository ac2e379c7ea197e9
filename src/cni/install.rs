//! The node installer, `meshcap cni install` / `meshcap cni uninstall`, run by a DaemonSet:
//! puts meshcap on the node as the chained CNI plugin `meshcap-cni` (the binary, a kubeconfig
//! from the pod's service account, meshcap's stanza in the primary network configuration) and
//! takes it off again. With `--watch` it keeps that state against other CNIs rewriting their
//! configuration and against token rotation, never reverting another writer's version of a file
//! (`guarded`), and yields to a newer installer on the same node (`claim`).

mod atomic;
mod binary;
mod claim;
mod cli;
mod confdir;
mod conflist;
mod error;
mod guarded;
mod kubeconfig;
mod node;
mod watch;

pub use error::InstallError;

use anyhow::Context;
use cli::{Cli, Command, InstallArgs, NodePaths};
use node::{Install, Paths};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `meshcap cni ARGS…` (`args[0]` is `cni`): exit 0 when done, 2 for bad flags, 1 when the
/// node could not be brought to the asked state.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::parse_args(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let done = match cli.command {
        Command::Install(args) => install(&args),
        Command::Uninstall(paths) => uninstall(&paths),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcap cni: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let paths = paths(&args.paths)?;
    let kubeconfig_on_host = args.host_cni_conf_dir.join(&paths.kubeconfig_name);
    let install = Install {
        binary_source: PathBuf::from(binary::SELF_EXE),
        service_account_dir: args.service_account_dir.clone(),
        server: kubeconfig::server_url(&args.kubernetes_service_host, args.kubernetes_service_port),
        stanza: conflist::stanza(
            &args.capture.clone().unwrap_or_default(),
            &kubeconfig_on_host.to_string_lossy(),
            &args.excluded_namespaces(),
        ),
        paths,
    };
    if args.watch {
        return watch::run(
            &install,
            Duration::from_secs(args.resync_seconds.into()),
            args.keep_on_exit,
        );
    }
    let changes = install.run().context("installing meshcap-cni")?;
    changes.log();
    Ok(())
}

fn uninstall(args: &NodePaths) -> anyhow::Result<()> {
    let paths = paths(args)?;
    let removed = node::uninstall(&paths).context("uninstalling meshcap-cni")?;
    removed.log();
    claim::remove(&paths.conf_dir);
    Ok(())
}

/// The node's directories, each checked to exist: a missing one is a mount missing from the
/// DaemonSet, to be said plainly rather than as a failed write deep inside.
fn paths(args: &NodePaths) -> anyhow::Result<Paths> {
    node::require_dir(&args.cni_conf_dir, "the CNI configuration directory")?;
    node::require_dir(&args.cni_bin_dir, "the CNI binary directory")?;
    Ok(Paths {
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        kubeconfig_name: args.kubeconfig_name.clone(),
    })
}
