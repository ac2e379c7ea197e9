//! `meshcap ambient pod|host`: ambient mode's rules from the command line, with the flags of
//! Istio's node agent (istio-cni) and the pod's annotations as `--annotation KEY=VALUE`.
//!
//! Bad flags and annotations exit 2 naming them; runtime failures exit 1.

use super::config::{HostConfig, NodeSettings, PodConfig, PodOverrides, ProbeSource};

use super::flags::key_value;
pub use super::flags::{Backend, BadInput, NodeFlags};
use super::plan::{self, AmbientPlan};
use super::{apply, iptables, nftables};
use crate::backend::Applied;
use crate::backend::session::Namespace;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Ambient mode: the rules Istio's node agent installs in an enrolled pod (for ztunnel) and on
/// the node (for the kubelet's probes).
#[derive(Parser, Debug)]
#[command(name = "meshcap ambient", max_term_width = 100)]
pub struct AmbientCli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The in-pod rules: nat redirection to ztunnel's ports, mangle marks, raw DNS zones, the
    /// fwmark rule and table 100's local routes.
    Pod(PodArgs),
    /// The node's rule: SNAT of the kubelet's probes to enrolled pods.
    Host(HostArgs),
    /// The node agent: the node's rule, a control socket for the CNI plugin (enrol a pod at
    /// ADD, let it go at DEL) and ZDS to ztunnel; runs until SIGTERM.
    Agent(super::daemon::AgentArgs),
    /// Ask the agent to enrol a pod (what the CNI plugin does at ADD).
    Enroll(super::daemon::EnrollArgs),
    /// Ask the agent to let a pod go (what the CNI plugin does at DEL).
    Unenroll(super::daemon::UnenrollArgs),
}

/// The flags of `pod` and `host`.
#[derive(Args, Debug)]
pub struct Common {
    /// Print the rules (iptables-restore input, or an nft -f script) and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub node: NodeFlags,

    /// Remove the rules instead of installing them.
    #[arg(long, conflicts_with_all = ["dry_run", "diff"])]
    pub cleanup: bool,

    /// Compare the kernel's rules with the plan: exit 0 in sync, 3 drifted.
    #[arg(long, conflicts_with = "dry_run")]
    pub diff: bool,
}

#[derive(Args, Debug)]
pub struct PodArgs {
    #[command(flatten)]
    pub common: Common,

    /// The pod's network namespace (a file under /run/netns or /proc/PID/ns/net) [default:
    /// the current one].
    #[arg(long)]
    pub network_namespace: Option<PathBuf>,

    /// A pod annotation (repeatable). Those that count: ambient.istio.io/bypass-inbound-capture,
    /// ambient.istio.io/dns-capture, istio.io/reroute-virtual-interfaces.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub annotations: Vec<(String, String)>,
}

#[derive(Args, Debug)]
pub struct HostArgs {
    #[command(flatten)]
    pub common: Common,
}

impl Common {
    pub fn backend(&self) -> Result<Backend, BadInput> {
        self.node.backend()
    }

    pub fn node(&self) -> NodeSettings {
        self.node.settings()
    }
}

/// The pod's plan from its flags and annotations.
pub fn pod_plan(args: &PodArgs) -> Result<AmbientPlan, BadInput> {
    let overrides = PodOverrides::from_annotations(
        args.annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(|e| BadInput(e.to_string()))?;
    Ok(plan::pod(&PodConfig::new(&args.common.node(), &overrides)))
}

/// The node's plan. nftables matches the kubelet's uid (Istio's nftables rule); iptables any
/// local socket (Istio's iptables rule).
pub fn host_plan(args: &HostArgs, backend: Backend) -> Result<AmbientPlan, BadInput> {
    let source = match backend {
        Backend::Iptables => ProbeSource::AnyLocalSocket,
        Backend::Nftables => match args.common.node().kubelet_uid {
            Some(uid) => ProbeSource::Uid(uid),
            None => {
                return Err(BadInput(
                    "--kubelet-uid is needed with the nftables backend (no kubelet process \
                     found to take it from)"
                        .into(),
                ));
            }
        },
    };
    Ok(plan::host(&HostConfig::new(&args.common.node(), source)))
}

/// The `--dry-run` text of a plan for a backend.
pub fn render(plan: &AmbientPlan, backend: Backend) -> String {
    match backend {
        Backend::Iptables => iptables::dry_run(plan),
        Backend::Nftables => nftables::script(plan),
    }
}

/// `meshcap ambient …` (`args[0]` is `ambient`).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = AmbientCli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    let (common, planned) = match &cli.command {
        Command::Pod(args) => (
            &args.common,
            args.common.backend().and_then(|b| Ok((b, pod_plan(args)?))),
        ),
        Command::Host(args) => (
            &args.common,
            args.common
                .backend()
                .and_then(|b| Ok((b, host_plan(args, b)?))),
        ),
        Command::Agent(args) => return super::daemon::agent(args),
        Command::Enroll(args) => return super::daemon::enroll(args),
        Command::Unenroll(args) => return super::daemon::unenroll(args),
    };
    let (backend, plan) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("meshcap ambient: {e}");
            return ExitCode::from(2);
        }
    };
    if common.dry_run {
        print!("{}", render(&plan, backend));
        return ExitCode::SUCCESS;
    }
    let namespace = match &cli.command {
        Command::Pod(args) => args.network_namespace.as_deref(),
        _ => None,
    };
    match run(common, backend, &plan, namespace) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshcap ambient: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Exit status of `--diff` when the namespace differs from the plan.
const EXIT_DRIFTED: u8 = 3;

fn run(
    common: &Common,
    backend: Backend,
    plan: &AmbientPlan,
    namespace: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    // The work runs inside the pod's namespace and comes back: nothing after it (logging, the
    // exit) runs there.
    let ns = match namespace {
        Some(path) => Namespace::open(path)?,
        None => Namespace::current(),
    };
    ns.run(|| -> anyhow::Result<ExitCode> {
        let variant = apply::Backend::pick(backend == Backend::Nftables);
        if common.diff {
            let diff = apply::drift(plan, variant)?;
            if diff.is_empty() {
                println!("in sync: the namespace holds exactly the planned rules");
                return Ok(ExitCode::SUCCESS);
            }
            print!("{diff}");
            return Ok(ExitCode::from(EXIT_DRIFTED));
        }
        if common.cleanup {
            apply::clean(plan, variant)?;
            tracing::info!("removed ambient's rules");
            return Ok(ExitCode::SUCCESS);
        }
        match apply::install(plan, variant)? {
            Applied::Installed => tracing::info!("rules installed"),
            Applied::AlreadyInPlace => tracing::info!("rules already in place; nothing changed"),
            Applied::Replaced => tracing::info!("rules of other settings replaced"),
        }
        Ok(ExitCode::SUCCESS)
    })?
}
