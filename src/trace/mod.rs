//! `meshcap trace [--network-namespace NS] [--count N] [--timeout DURATION] FILTER…`: the live
//! packet trace, all of it. This file is the command line edge: it validates the filter (bad
//! words exit 2 naming the word), opens the namespace, refuses when Istio's rules live in
//! iptables-legacy (exit 1), and runs the nftables trace client inside the namespace.
//!
//! - [`filter`]: the filter words;
//! - [`legacy`]: the iptables-legacy refusal;
//! - [`client`]: the trace client (table, listener, printer), over the nftables codec:
//!   - [`table`]: the temporary table's batch (and its removal, a drop guard);
//!   - [`listen`]: the trace group socket and the stop signals;
//!   - [`event`]: one trace message, and the packet headers it carries;
//!   - [`rules`]: rule handle to rule text, `nft` syntax ([`iptables_nft`]: iptables'
//!     spelling of iptables-nft's rules);
//!   - [`verdict`]: the verdict in explain's words (ztunnel's and the sidecar's ports).

mod client;
mod event;
pub mod filter;
mod iptables_nft;
mod legacy;
mod listen;
mod rules;
mod table;
mod verdict;

use crate::backend::session::Namespace;
use clap::Parser;
use client::{Options, Stopped};
use filter::Filter;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use table::TRACE_TABLE;

/// Exit status of a filter or flag that cannot be used.
const EXIT_BAD_INPUT: u8 = 2;

/// `meshcap trace`: which rules real packets pass.
#[derive(Debug, Parser)]
#[command(
    name = "meshcap trace",
    bin_name = "meshcap trace",
    about = "Show which netfilter rules real packets pass (nftables trace; no nft binary needed)",
    long_about = "Show which netfilter rules real packets pass, live.\n\n\
        Adds a temporary table `inet meshcap-trace` whose chains (hooks prerouting and output, \
        priority -350: before every raw, mangle and nat table) set `meta nftrace` on the packets \
        FILTER names, listens on the nftables trace netlink group and prints, per packet, every \
        rule it matched in every nf_tables table (meshcap's nftables tables and the tables of \
        iptables-nft alike; rules spelled as read-back spells them, with their handles), the \
        chain policies, returns and verdicts, and finally one verdict line per packet (captured \
        by which rule, not captured, or dropped). The table is removed when the trace ends: \
        after --count packets, after --timeout, or on Ctrl-C, SIGTERM or SIGHUP.\n\n\
        Rules installed through iptables-legacy are not nf_tables rules and do not trace: when \
        iptables-legacy holds Istio chains, trace refuses (exit status 1).\n\n\
        Exit status: 0 when the trace ran (however it was stopped), 1 when it could not (no \
        privileges, iptables-legacy rules, a trace already running), 2 for a bad flag or \
        filter word.",
    after_help = "Example: meshcap trace --network-namespace mypod --count 1 proto=tcp dst=198.51.100.10:80"
)]
pub struct TraceArgs {
    /// Network namespace to trace in: a path such as /var/run/netns/NAME, or a bare NAME
    /// (ip netns). Default: the current one.
    #[arg(long = "network-namespace", value_name = "NS")]
    pub network_namespace: Option<String>,

    /// Stop after N traced packets (a packet is one nftables trace id).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this long (Go duration: 30s, 1m30s, …).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub timeout: Option<Duration>,

    /// Which packets to trace, all words must hold: proto=tcp|udp, dst=IP[:PORT] (IPv6 with a
    /// port: dst=[IPv6]:PORT), src=IP. None: every packet.
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// A bare name is one of `ip netns`'s namespaces, as for the installer's flag.
fn namespace_path(text: &str) -> PathBuf {
    if text.contains('/') {
        PathBuf::from(text)
    } else {
        PathBuf::from("/var/run/netns").join(text)
    }
}

/// Entry point of `meshcap trace ARGS…` (`args` starts with "trace").
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match TraceArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let filter = match Filter::parse(&args.filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("meshcap trace: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match run(&args, &filter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcap trace: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &TraceArgs, filter: &Filter) -> anyhow::Result<()> {
    let ns = match args
        .network_namespace
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(ns) => Namespace::open(&namespace_path(ns.trim()))?,
        None => Namespace::current(),
    };
    if let Some((program, chain)) = legacy::istio_chains(&ns)? {
        anyhow::bail!(
            "{program} shows chain {chain}: the rules are installed through iptables-legacy, \
             whose tables are not nf_tables and send no nftables trace (legacy tracing, \
             -j TRACE, goes to the kernel log); trace after installing with the nftables \
             backend or iptables-nft, or use `meshcap explain --kernel`"
        );
    }
    let options = Options {
        count: args.count,
        timeout: args.timeout,
    };
    let mut stdout = std::io::stdout().lock();
    // The whole trace runs in the namespace: its table, its trace socket.
    let (packets, stopped) = ns.run(|| {
        client::run(filter, &options, &mut stdout, &mut || {
            eprintln!("meshcap trace: tracing {filter} (table inet {TRACE_TABLE}); Ctrl-C stops");
        })
    })??;
    let why = match stopped {
        Stopped::Count => "count reached".to_owned(),
        Stopped::Timeout => "timeout".to_owned(),
        Stopped::Signal(name) => name,
    };
    eprintln!(
        "meshcap trace: {packets} packet(s) traced; stopped: {why}; table inet {TRACE_TABLE} removed"
    );
    Ok(())
}
