//! `meshcap explain`: where a connection goes under the rules of a configuration (its plan) or
//! under the rules the kernel holds (`--kernel`), rule by rule.
//!
//! - this file is the command's edge: arguments, the rules (from the namespace session or the
//!   plan), printing;
//! - [`simulate`]: the walk of one packet through the hooks, tables and chains;
//! - [`rules`]: the typed rules it walks, as the backends hand them over, and per rule its
//!   evaluator, [`iptables`] (saved rules) or [`nftables`] (a register machine over the
//!   codec's expressions), both on the [`packet`] they change;
//! - [`flow`]: the `--flow` words;
//! - [`ambient`]: ambient mode's rules (ztunnel's), with verdicts named after its ports.

pub mod ambient;
mod flow;
mod iptables;
mod nftables;
mod packet;
mod rules;
mod simulate;

pub use flow::{Direction, Flow, FlowError, State};
pub use rules::{Rules, RulesError};
pub use simulate::{Explanation, Listeners, Step, Verdict, explain};

use crate::ambient::config::{NodeSettings, PodConfig, PodOverrides};
use crate::ambient::plan::AmbientPlan;
use crate::ambient::readback;
use crate::backend::Ruleset;
use crate::backend::session::{self, Namespace, Session, Waits};
use crate::config::{BackendKind, Config};
use crate::plan::{Family, Plan};
use anyhow::Context;
use std::ffi::OsString;
use std::process::ExitCode;

const HELP: &str = "\
Where did my connection go? Walks a connection's packet through meshcap's rules as netfilter
would and prints each rule tested, whether it matched, and where the connection lands.

Usage: meshcap explain [INSTALLER FLAGS…] --flow FLOW [--flow FLOW …] [--kernel] [--json]
       meshcap explain --ambient [AMBIENT FLAGS…] --flow FLOW … [--kernel] [--json]

  INSTALLER FLAGS  the configuration, exactly as for installing (-p 15001 -u 1337 -i '*' …);
                   --backend picks the spelling, --network-namespace the namespace (--kernel)
  --ambient        ambient mode's in-pod rules (ztunnel's redirection) instead of a sidecar's;
                   with --kernel it is picked by itself when the namespace holds ambient's
                   rules and no sidecar's
  AMBIENT FLAGS    the node agent's, as for `meshcap ambient pod`: --ambient-dns-capture,
                   --ambient-ipv6, --host-probe-snat-ip, --host-probe-snat-ipv6, and the pod's
                   annotations as --annotation KEY=VALUE (repeatable)
  --flow FLOW      key=value words, one connection:
                     dir=out|in         required: sent by the pod, or arriving at it
                     dst=IP:PORT        required; IPv6 as [ADDR]:PORT
                     proto=tcp|udp      default tcp
                     src=IP             default: what Linux picks for loopback, else unknown
                     uid=N gid=N        the sending process (dir=out), default 0
                     oif=NAME|iif=NAME  default lo for loopback destinations (dir=out), else eth0;
                                        use oif=lo for the pod's own addresses
                     mark=N             packet mark, default 0
                     state=new|established  default new
  --kernel         explain the rules the namespace holds (read back with every backend) instead
                   of the configuration's plan; differences from the plan are printed first
  --json           one JSON object per flow: verdict, class, port, reason, decided_by,
                   steps, notes, rules, drift

Verdicts: captured-outbound PORT, captured-inbound PORT (REDIRECT or TPROXY), captured-dns PORT,
direct, dropped; each with the rule that decided it. Ambient: ztunnel's ports (15001, 15006,
15053), and why a direct connection was left alone: direct (ztunnel's own), (ztunnel's
connection), (kubelet probe), (reply to a kubelet probe), (HBONE 15008), (loopback), (by lo).

Exit status: 0 explained, 2 bad flags or flow words, 1 the rules could not be read.
";

/// `meshcap explain`'s command line: its own flags and the installer's (the configuration).
#[derive(Debug, clap::Parser)]
#[command(
    name = "meshcap explain",
    bin_name = "meshcap explain",
    override_help = HELP,
    override_usage = "meshcap explain [INSTALLER FLAGS…] --flow FLOW [--flow FLOW …] [--kernel] [--json]",
    args_override_self = true,
    disable_version_flag = true
)]
struct ExplainArgs {
    /// One connection, as key=value words.
    #[arg(long = "flow", value_name = "FLOW", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    flows: Vec<String>,

    /// Explain the rules the namespace holds instead of the plan.
    #[arg(long)]
    kernel: bool,

    /// One JSON object per flow.
    #[arg(long)]
    json: bool,

    /// Ambient mode's rules instead of a sidecar's.
    #[arg(long)]
    ambient: bool,

    /// The node agent's flags, as `meshcap ambient pod` takes them (no variables: explain's
    /// command line holds what it explains).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = crate::ambient::flags::parse_bool)]
    ambient_dns_capture: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = crate::ambient::flags::parse_bool)]
    ambient_ipv6: Option<bool>,
    #[arg(long)]
    host_probe_snat_ip: Option<std::net::Ipv4Addr>,
    #[arg(long)]
    host_probe_snat_ipv6: Option<std::net::Ipv6Addr>,

    /// A pod annotation (ambient).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = crate::ambient::flags::key_value)]
    annotations: Vec<(String, String)>,

    #[command(flatten)]
    installer: crate::cli::Cli,
}

/// `meshcap explain …`; `args[0]` is the subcommand's name.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let bad = |msg: &str| {
        eprintln!("meshcap explain: {msg}");
        ExitCode::from(2)
    };
    let args: ExplainArgs = match crate::cli::parse_given(args) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if args.flows.is_empty() {
        return bad("at least one --flow is needed (meshcap explain --help)");
    }
    let mut flows = Vec::new();
    for text in &args.flows {
        match text.parse::<Flow>() {
            Ok(flow) => flows.push(flow),
            Err(e) => return bad(&e.to_string()),
        }
    }
    let overrides = match PodOverrides::from_annotations(
        args.annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(overrides) => overrides,
        Err(e) => return bad(&e.to_string()),
    };
    let defaults = NodeSettings::default();
    let node = NodeSettings {
        dns_capture: args.ambient_dns_capture.unwrap_or(defaults.dns_capture),
        ipv6: args.ambient_ipv6.unwrap_or(defaults.ipv6),
        probe_snat_v4: args.host_probe_snat_ip.unwrap_or(defaults.probe_snat_v4),
        probe_snat_v6: args.host_probe_snat_ipv6.unwrap_or(defaults.probe_snat_v6),
        ..defaults
    };
    let ambient_plan = crate::ambient::plan::pod(&PodConfig::new(&node, &overrides));
    let invocation = args.installer.into_invocation(std::env::vars().collect());
    let config = match crate::cli::config_or_exit(&invocation.inputs) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mode = Mode {
        kernel: args.kernel,
        json: args.json,
        ambient: args.ambient,
    };
    match run(&config, &ambient_plan, &flows, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcap explain: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What the rules were read from, and how they differ from the plan.
struct Source {
    what: String,
    drift: Vec<String>,
}

/// What to explain and how to print it.
#[derive(Clone, Copy)]
struct Mode {
    kernel: bool,
    json: bool,
    ambient: bool,
}

fn run(
    config: &Config,
    ambient_plan: &AmbientPlan,
    flows: &[Flow],
    mode: Mode,
) -> anyhow::Result<()> {
    let plan = crate::plan::build(&config.capture);
    let Mode { kernel, json, .. } = mode;
    let mut ambient = mode.ambient;
    let (rules, source) = if kernel {
        let readings = if ambient {
            ambient_readings(config, ambient_plan)?
        } else {
            // Only a hint here: a namespace whose ambient rules cannot be read is explained
            // as a sidecar's, as before ambient mode existed.
            ambient_readings(config, ambient_plan).unwrap_or_else(|e| {
                tracing::debug!("ambient's rules not read: {e:#}");
                Vec::new()
            })
        };
        let (sidecar, sidecar_source, sidecar_found) = kernel_rules(config, &plan)?;
        // Found by itself: ambient's rules, and none of a sidecar's beyond the chain names
        // both share (ISTIO_OUTPUT).
        ambient |= !readings.is_empty() && !sidecar_found;
        if ambient {
            ambient_kernel_rules(&readings)?
        } else {
            (sidecar, sidecar_source)
        }
    } else if ambient {
        let what = match config.run.backend {
            BackendKind::Iptables => "ambient plan (iptables spelling)",
            BackendKind::Nftables => "ambient plan (nftables spelling)",
        };
        (
            ambient::expected_rules(ambient_plan, config.run.backend)
                .context("the ambient plan's rules")?,
            Source {
                what: what.into(),
                drift: Vec::new(),
            },
        )
    } else {
        let rules = Rules::from_typed(&session::expected_typed(&config.run, &plan))
            .context("the plan's rules")?;
        let what = match config.run.backend {
            BackendKind::Iptables => "plan (iptables spelling)",
            BackendKind::Nftables => "plan (nftables spelling)",
        };
        (
            rules,
            Source {
                what: what.into(),
                drift: Vec::new(),
            },
        )
    };
    let listeners = Listeners::of(&config.capture);
    if !json {
        println!("rules: {}", source.what);
        if !source.drift.is_empty() {
            println!("the kernel's rules differ from the plan for these flags:");
            for line in &source.drift {
                println!("  {line}");
            }
            println!("explaining the kernel's rules:");
        }
    }
    for flow in flows {
        let ex = if ambient {
            ambient::explain(&rules, flow)
        } else {
            explain(&rules, flow, &listeners)
        };
        if json {
            println!("{}", to_json(&ex, &source));
        } else {
            print!("\n{}", to_text(&ex));
        }
    }
    Ok(())
}

/// The namespace `--network-namespace` names, or the current one.
fn namespace(config: &Config) -> anyhow::Result<Namespace> {
    Ok(match &config.run.network_namespace {
        Some(path) => Namespace::open(path)?,
        None => Namespace::current(),
    })
}

/// ambient's rules in the kernel, read back with every backend that holds some.
fn ambient_readings(config: &Config, plan: &AmbientPlan) -> anyhow::Result<Vec<readback::Reading>> {
    namespace(config)?
        .run(|| readback::every_backend(plan))?
        .context("reading ambient's rules")
}

/// The rules of ambient's readings, and the drift of each from what its backend would hold
/// for the plan.
fn ambient_kernel_rules(readings: &[readback::Reading]) -> anyhow::Result<(Rules, Source)> {
    let mut rules = Rules::default();
    let mut drift = Vec::new();
    for reading in readings {
        let name = reading.backend;
        drift.extend(diff_lines(name, &reading.read, &reading.expected));
        rules.extend(
            Rules::from_typed(&reading.rules).with_context(|| format!("the {name} rules"))?,
        );
    }
    let names: Vec<&str> = readings.iter().map(|r| r.backend).collect();
    let what = match names.as_slice() {
        [] => "kernel (no ambient rules in this namespace)".to_owned(),
        names => format!("kernel, ambient rules installed by {}", names.join(" and ")),
    };
    Ok((rules, Source { what, drift }))
}

/// Whether a read-back chain key names a sidecar's chain: ambient's rules share only
/// ISTIO_OUTPUT and the hook chains with a sidecar's iptables rules.
fn sidecar_chain(key: &str) -> bool {
    let chain = key.rsplit(' ').next().unwrap_or_default();
    !matches!(
        chain,
        "PREROUTING" | "OUTPUT" | "POSTROUTING" | "ISTIO_OUTPUT" | "ISTIO_PRERT"
    )
}

/// The kernel's rules, read back with every backend that holds some, the drift of each
/// from what it would hold for the plan, and whether a sidecar's own chains were among them.
fn kernel_rules(config: &Config, plan: &Plan) -> anyhow::Result<(Rules, Source, bool)> {
    let session = Session::open(namespace(config)?, &config.run, plan.clone(), Waits::PLUGIN)?;
    let readings = session
        .read_back_every_backend()
        .context("reading the kernel's rules")?;
    let mut rules = Rules::default();
    let mut drift = Vec::new();
    for reading in &readings {
        let name = reading.backend;
        drift.extend(diff_lines(name, &reading.read, &reading.expected));
        rules.extend(
            Rules::from_typed(&reading.rules).with_context(|| format!("the {name} rules"))?,
        );
    }
    if readings.is_empty() {
        let expected = session::expected(&config.run, plan);
        drift.extend(diff_lines(
            "no rules installed",
            &Ruleset::default(),
            &expected,
        ));
    }
    let names: Vec<&str> = readings.iter().map(|r| r.backend).collect();
    let what = match names.as_slice() {
        [] => "kernel (no meshcap rules in this namespace)".to_owned(),
        names => format!("kernel, installed by {}", names.join(" and ")),
    };
    let found = readings
        .iter()
        .any(|r| r.read.chains.keys().any(|k| sidecar_chain(k)));
    Ok((rules, Source { what, drift }, found))
}

/// `meshcap diff`'s lines for one backend's read-back, each prefixed with `name`.
fn diff_lines(name: &str, have: &Ruleset, want: &Ruleset) -> Vec<String> {
    have.diff(want)
        .to_string()
        .lines()
        .map(|line| format!("{name}: {line}"))
        .collect()
}

fn family_name(ex: &Explanation) -> &'static str {
    match ex.family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn to_text(ex: &Explanation) -> String {
    let mut out = format!("flow {} ({})\n", ex.flow, family_name(ex));
    let place = |s: &Step| format!("{} {} {}", s.hook, s.table, s.chain);
    let width = ex.steps.iter().map(|s| place(s).len()).max().unwrap_or(0);
    for s in &ex.steps {
        let place = format!("{:<width$}", place(s));
        let line = match &s.rule {
            None => format!("  {place}  {}", s.action),
            Some(rule) => {
                let mut line = format!(
                    "  {place}  {}  {rule}",
                    if s.matched { "match   " } else { "no match" }
                );
                if !s.action.is_empty() {
                    line.push_str(&format!(" => {}", s.action));
                }
                if !s.effects.is_empty() {
                    line.push_str(&format!(" [{}]", s.effects.join(", ")));
                }
                line
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    for note in &ex.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    out.push_str(&format!("verdict: {}\n", ex.verdict_text()));
    match &ex.decided_by {
        Some(s) => out.push_str(&format!(
            "decided by: {} {} {}: {}\n",
            s.hook,
            s.table,
            s.chain,
            s.rule.as_deref().unwrap_or("policy")
        )),
        None => out.push_str("decided by: no rule (the chains' policies)\n"),
    }
    out
}

fn to_json(ex: &Explanation, source: &Source) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = ex
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "hook": s.hook,
                "table": s.table,
                "chain": s.chain,
                "rule": s.rule,
                "matched": s.matched,
                "action": s.action,
                "effects": s.effects,
            })
        })
        .collect();
    serde_json::json!({
        "flow": ex.flow.to_string(),
        "family": family_name(ex),
        "rules": source.what,
        "drift": source.drift,
        "steps": steps,
        "notes": ex.notes,
        "verdict": ex.verdict_text(),
        "class": ex.verdict.class(),
        "port": ex.verdict.port(),
        "reason": ex.reason,
        "decided_by": ex.decided_by.as_ref().map(|s| serde_json::json!({
            "hook": s.hook,
            "table": s.table,
            "chain": s.chain,
            "rule": s.rule,
        })),
    })
}
