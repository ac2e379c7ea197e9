//! `meshcap ambient pod|host`: ambient mode's rules from the command line, with the flags of
//! Istio's node agent (istio-cni) and the pod's annotations as `--annotation KEY=VALUE`.
//!
//! Bad flags and annotations exit 2 naming them; runtime failures exit 1.

use super::config::{HostConfig, NodeSettings, PodConfig, PodOverrides, ProbeSource};
use super::plan::{self, AmbientPlan};
use super::{apply, iptables, nftables};
use crate::backend::Applied;
use crate::backend::session::Namespace;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// The node agent's settings, shared by every subcommand.
#[derive(Args, Debug)]
pub struct NodeFlags {
    /// Send the pod's DNS (UDP and TCP port 53) to ztunnel's DNS proxy (15053).
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub ambient_dns_capture: bool,

    /// IPv6 rules, routes and probe set too.
    #[arg(long, env = "AMBIENT_IPV6", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub ambient_ipv6: bool,

    /// The source address the node gives the kubelet's probes (IPv4).
    #[arg(long, env = "HOST_PROBE_SNAT_IP", default_value_t = super::config::DEFAULT_PROBE_SNAT_V4)]
    pub host_probe_snat_ip: Ipv4Addr,

    /// The source address the node gives the kubelet's probes (IPv6).
    #[arg(long, env = "HOST_PROBE_SNAT_IPV6", default_value_t = super::config::DEFAULT_PROBE_SNAT_V6)]
    pub host_probe_snat_ipv6: Ipv6Addr,
}

impl NodeFlags {
    pub fn settings(&self) -> NodeSettings {
        NodeSettings {
            dns_capture: self.ambient_dns_capture,
            ipv6: self.ambient_ipv6,
            probe_snat_v4: self.host_probe_snat_ip,
            probe_snat_v6: self.host_probe_snat_ipv6,
        }
    }
}

/// The flags of `pod` and `host`.
#[derive(Args, Debug)]
pub struct Common {
    /// Print the rules (iptables-restore input, or an nft -f script) and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// The backend [default: iptables].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,

    /// Istio's spelling of --backend nftables.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub native_nftables: Option<bool>,

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

    /// The kubelet's uid, whose probes the nftables rule matches [default: the uid of the
    /// running kubelet process].
    #[arg(long)]
    pub kubelet_uid: Option<u32>,
}

/// Go's strconv.ParseBool, as Istio's flags parse booleans.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("must be KEY=VALUE".into()),
    }
}

/// A bad input: exit 2 after saying which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(String);

impl Common {
    pub fn backend(&self) -> Result<Backend, BadInput> {
        match (self.backend, self.native_nftables) {
            (Some(Backend::Iptables), Some(true)) => Err(BadInput(
                "--backend iptables and --native-nftables cannot be used together".into(),
            )),
            (Some(b), _) => Ok(b),
            (None, Some(true)) => Ok(Backend::Nftables),
            (None, _) => Ok(Backend::Iptables),
        }
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
        Backend::Nftables => match args.kubelet_uid.or_else(kubelet_uid) {
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

/// The uid of a process named `kubelet`, as Istio's nftables mode looks it up.
fn kubelet_uid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim_end() != "kubelet" {
            return None;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
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
    if backend == Backend::Nftables {
        anyhow::bail!(
            "the nftables backend only prints ambient rules so far (--dry-run); \
             installing them over netlink is not implemented yet (use --backend iptables)"
        );
    }
    // The work runs inside the pod's namespace and comes back: nothing after it (logging, the
    // exit) runs there.
    let ns = match namespace {
        Some(path) => Namespace::open(path)?,
        None => Namespace::current(),
    };
    ns.run(|| -> anyhow::Result<ExitCode> {
        let variant = apply::variant();
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
