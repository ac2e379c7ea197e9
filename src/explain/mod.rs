//! `meshcap explain`: where a connection goes under the rules of a configuration (its plan) or
//! under the rules the kernel holds (`--kernel`), rule by rule.
//!
//! - this file is the command's edge: arguments, the rules (from the namespace session or the
//!   plan), printing;
//! - [`simulate`]: the walk of one packet through the hooks, tables and chains;
//! - [`rules`]: the typed rules it walks, as the backends hand them over, and per rule its
//!   evaluator, [`iptables`] (saved rules) or [`nftables`] (a register machine over the
//!   codec's expressions), both on the [`packet`] they change;
//! - [`flow`]: the `--flow` words.

mod flow;
mod iptables;
mod nftables;
mod packet;
mod rules;
mod simulate;

pub use flow::{Direction, Flow, FlowError, State};
pub use rules::{Rules, RulesError};
pub use simulate::{Explanation, Listeners, Step, Verdict, explain};

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

  INSTALLER FLAGS  the configuration, exactly as for installing (-p 15001 -u 1337 -i '*' …);
                   --backend picks the spelling, --network-namespace the namespace (--kernel)
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
  --json           one JSON object per flow

Verdicts: captured-outbound PORT, captured-inbound PORT (REDIRECT or TPROXY), captured-dns PORT,
direct, dropped.

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
    let invocation = args.installer.into_invocation(std::env::vars().collect());
    let config = match crate::cli::config_or_exit(&invocation.inputs) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match run(&config, &flows, args.kernel, args.json) {
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

fn run(config: &Config, flows: &[Flow], kernel: bool, json: bool) -> anyhow::Result<()> {
    let plan = crate::plan::build(&config.capture);
    let (rules, source) = if kernel {
        kernel_rules(config, &plan)?
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
        let ex = explain(&rules, flow, &listeners);
        if json {
            println!("{}", to_json(&ex, &source));
        } else {
            print!("\n{}", to_text(&ex));
        }
    }
    Ok(())
}

/// The kernel's rules, read back with every backend that holds some, and the drift of each
/// from what it would hold for the plan.
fn kernel_rules(config: &Config, plan: &Plan) -> anyhow::Result<(Rules, Source)> {
    let ns = match &config.run.network_namespace {
        Some(path) => Namespace::open(path)?,
        None => Namespace::current(),
    };
    let session = Session::open(ns, &config.run, plan.clone(), Waits::PLUGIN)?;
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
    Ok((rules, Source { what, drift }))
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
    out.push_str(&format!("verdict: {}\n", ex.verdict));
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
        "verdict": ex.verdict.to_string(),
        "class": ex.verdict.class(),
        "port": ex.verdict.port(),
    })
}
